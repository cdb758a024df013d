;; Tries to open /etc/passwd through WASI (fd 3 would be the first preopened directory).
;; Status 1 "denied" when path_open fails, as it must; "OPENED" would be a breach.
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  ;; The pushdown ABI v1 (pushdown-plugins/ABI.md): memory, version, a bump allocator.
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (func (export "pushdown_abi_version") (result i32) i32.const 1)
  (func (export "pushdown_alloc") (param $len i32) (result i32)
    (local $p i32)
    global.get $heap
    local.set $p
    global.get $heap
    local.get $len
    i32.add
    global.set $heap
    (block $done
      (loop $grow
        global.get $heap
        memory.size
        i32.const 16
        i32.shl
        i32.le_u
        br_if $done
        i32.const 16
        memory.grow
        drop
        br $grow))
    local.get $p)
  (data (i32.const 100) "/etc/passwd")
  (data (i32.const 200) "\01path_open denied")
  (data (i32.const 300) "\01OPENED /etc/passwd")
  (func (export "pushdown_run") (param i32 i32 i32 i32) (result i64)
    (call $path_open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 11)
      (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 400))
    (if (result i64) (i32.eqz)
      (then (i64.const 0x0000012C00000013))    ;; ptr 300, len 19
      (else (i64.const 0x000000C800000011))))) ;; ptr 200, len 17
