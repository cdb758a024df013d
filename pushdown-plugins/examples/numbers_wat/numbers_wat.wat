;; Parser plugin `numbers_wat`, written in WebAssembly text without the Rust SDK: one
;; signed decimal integer per line becomes column `n BIGINT NOT NULL`; blank lines are
;; skipped, anything else fails with `line N: not an integer`.
;;
;; It shows what the ABI (pushdown-plugins/ABI.md) asks of a module in any language:
;; the five common exports, `pushdown_parse`, and a result buffer of a status byte and an
;; Arrow IPC stream. The stream is a fixed schema message, then one record batch message
;; whose metadata (a FlatBuffer, written once by pyarrow for a 3-row batch) is copied
;; from a template with four numbers patched in, then the values, then end-of-stream.
;;
;; Register it as it is: `pushdown plugin register numbers_wat.wat`.
(module
  (memory (export "memory") 2)
  ;; Bump allocator: everything above the data; memory grows as needed, never freed
  ;; (an instance is reused only a bounded number of times, see the ABI).
  (global $next (mut i32) (i32.const 65536))

  ;; 1024: IPC template, 272 bytes: schema message (128) + record batch message (144).
  (data (i32.const 1024)
    "\ff\ff\ff\ff\78\00\00\00\10\00\00\00\00\00\0a\00\0c\00\06\00\05\00\08\00\0a\00\00\00\00\01\04\00"
    "\0c\00\00\00\08\00\08\00\00\00\04\00\08\00\00\00\04\00\00\00\01\00\00\00\14\00\00\00\10\00\14\00"
    "\08\00\00\00\07\00\0c\00\00\00\10\00\10\00\00\00\00\00\00\02\10\00\00\00\1c\00\00\00\04\00\00\00"
    "\00\00\00\00\01\00\00\00\6e\00\00\00\08\00\0c\00\08\00\07\00\08\00\00\00\00\00\00\01\40\00\00\00"
    "\ff\ff\ff\ff\88\00\00\00\14\00\00\00\00\00\00\00\0c\00\16\00\06\00\05\00\08\00\0c\00\0c\00\00\00"
    "\00\03\04\00\18\00\00\00\18\00\00\00\00\00\00\00\00\00\0a\00\18\00\0c\00\04\00\08\00\0a\00\00\00"
    "\3c\00\00\00\10\00\00\00\03\00\00\00\00\00\00\00\00\00\00\00\02\00\00\00\00\00\00\00\00\00\00\00"
    "\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\18\00\00\00\00\00\00\00\00\00\00\00\01\00\00\00"
    "\03\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00"  )
  ;; 2048: the signature, 95 bytes.
  (data (i32.const 2048) "{\"kind\":\"parser\",\"name\":\"numbers_wat\",\"columns\":[{\"name\":\"n\",\"type\":\"Int64\",\"nullable\":false}]}")
  ;; 2200: error text "line ", and " : not an integer" after the number.
  (data (i32.const 2200) "line ")
  (data (i32.const 2208) ": not an integer")

  (func (export "pushdown_abi_version") (result i32) (i32.const 1))

  (func $alloc (export "pushdown_alloc") (param $len i32) (result i32)
    (local $ptr i32) (local $end i32) (local $pages i32)
    ;; 8-byte aligned
    (local.set $ptr (i32.and (i32.add (global.get $next) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (local.set $pages
          (i32.add (i32.shr_u (i32.sub (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
                              (i32.const 16))
                   (i32.const 1)))
        (if (i32.eq (memory.grow (local.get $pages)) (i32.const -1)) (then unreachable))))
    (global.set $next (local.get $end))
    (local.get $ptr))

  (func (export "pushdown_free") (param i32 i32))

  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))

  (func (export "pushdown_signature") (result i64)
    (call $pack (i32.const 2048) (i32.const 95)))

  ;; Writes the decimal digits of $v (> 0) ending just before $end; returns the first byte.
  (func $digits (param $v i64) (param $end i32) (result i32)
    (loop $more
      (local.set $end (i32.sub (local.get $end) (i32.const 1)))
      (i32.store8 (local.get $end)
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $v) (i64.const 10)))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $more (i64.ne (local.get $v) (i64.const 0))))
    (local.get $end))

  ;; Status 1 and "line N: not an integer".
  (func $error (param $line i64) (result i64)
    (local $buf i32) (local $start i32) (local $n i32)
    (local.set $buf (call $alloc (i32.const 64)))
    (i32.store8 (local.get $buf) (i32.const 1))
    (memory.copy (i32.add (local.get $buf) (i32.const 1)) (i32.const 2200) (i32.const 5))
    ;; digits into the scratch area at buf+32..buf+56, then moved after "line "
    (local.set $start (call $digits (local.get $line) (i32.add (local.get $buf) (i32.const 56))))
    (local.set $n (i32.sub (i32.add (local.get $buf) (i32.const 56)) (local.get $start)))
    (memory.copy (i32.add (local.get $buf) (i32.const 6)) (local.get $start) (local.get $n))
    (memory.copy (i32.add (i32.add (local.get $buf) (i32.const 6)) (local.get $n))
                 (i32.const 2208) (i32.const 16))
    (call $pack (local.get $buf) (i32.add (i32.const 22) (local.get $n))))

  (func (export "pushdown_parse") (param $in i32) (param $len i32) (param $first_line i64) (result i64)
    (local $out i32) (local $values i32) (local $rows i32) (local $i i32) (local $end i32)
    (local $c i32) (local $line i64) (local $v i64) (local $neg i32) (local $digits i32)
    (local $meta i32) (local $body i64) (local $total i32)
    ;; status + template + at most one value per two input bytes (+1) + end-of-stream
    (local.set $out (call $alloc
      (i32.add (i32.const 288) (i32.mul (i32.const 8) (i32.add (local.get $len) (i32.const 1))))))
    (i32.store8 (local.get $out) (i32.const 0))
    (memory.copy (i32.add (local.get $out) (i32.const 1)) (i32.const 1024) (i32.const 272))
    (local.set $values (i32.add (local.get $out) (i32.const 273)))
    (local.set $i (local.get $in))
    (local.set $end (i32.add (local.get $in) (local.get $len)))
    (local.set $line (local.get $first_line))
    (block $done
      (loop $lines
        (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
        (local.set $v (i64.const 0))
        (local.set $neg (i32.const 0))
        (local.set $digits (i32.const 0))
        ;; one line: [spaces] [-] digits [spaces] [\r] \n
        (block $eol
          (loop $chars
            (br_if $eol (i32.ge_u (local.get $i) (local.get $end)))
            (local.set $c (i32.load8_u (local.get $i)))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $eol (i32.eq (local.get $c) (i32.const 10)))
            (if (i32.and (i32.ge_u (local.get $c) (i32.const 48)) (i32.le_u (local.get $c) (i32.const 57)))
              (then
                (local.set $v (i64.add (i64.mul (local.get $v) (i64.const 10))
                                       (i64.extend_i32_u (i32.sub (local.get $c) (i32.const 48)))))
                (local.set $digits (i32.add (local.get $digits) (i32.const 1)))
                (br $chars)))
            (if (i32.and (i32.eq (local.get $c) (i32.const 45)) (i32.eqz (local.get $digits)))
              (then (if (local.get $neg) (then (return (call $error (local.get $line)))))
                    (local.set $neg (i32.const 1)) (br $chars)))
            (br_if $chars (i32.or (i32.eq (local.get $c) (i32.const 32)) (i32.eq (local.get $c) (i32.const 13))))
            (return (call $error (local.get $line)))))
        (if (i32.gt_u (local.get $digits) (i32.const 18)) (then (return (call $error (local.get $line)))))
        (if (local.get $digits)
          (then
            (i64.store (i32.add (local.get $values) (i32.mul (local.get $rows) (i32.const 8)))
              (select (i64.sub (i64.const 0) (local.get $v)) (local.get $v) (local.get $neg)))
            (local.set $rows (i32.add (local.get $rows) (i32.const 1))))
          (else (if (local.get $neg) (then (return (call $error (local.get $line)))))))
        (local.set $line (i64.add (local.get $line) (i64.const 1)))
        (br $lines)))
    ;; Patch the record batch metadata (it starts 136 bytes into the template):
    ;; Message.bodyLength @32, RecordBatch.length @64, values Buffer.length @104, FieldNode.length @120.
    (local.set $meta (i32.add (local.get $out) (i32.const 137)))
    (local.set $body (i64.extend_i32_u (i32.mul (local.get $rows) (i32.const 8))))
    (i64.store (i32.add (local.get $meta) (i32.const 32)) (local.get $body))
    (i64.store (i32.add (local.get $meta) (i32.const 64)) (i64.extend_i32_u (local.get $rows)))
    (i64.store (i32.add (local.get $meta) (i32.const 104)) (local.get $body))
    (i64.store (i32.add (local.get $meta) (i32.const 120)) (i64.extend_i32_u (local.get $rows)))
    ;; End of stream: continuation marker and a zero length.
    (local.set $total (i32.add (i32.const 273) (i32.mul (local.get $rows) (i32.const 8))))
    (i32.store (i32.add (local.get $out) (local.get $total)) (i32.const -1))
    (i32.store (i32.add (i32.add (local.get $out) (local.get $total)) (i32.const 4)) (i32.const 0))
    (call $pack (local.get $out) (i32.add (local.get $total) (i32.const 8))))
)
