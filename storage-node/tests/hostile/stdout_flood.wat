;; Writes 64 KiB to stdout 65 536 times (4 GiB): the stdout cap must stop it.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
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
  (func (export "pushdown_run") (param i32 i32 i32 i32) (result i64)
    (local $i i32)
    ;; iovec at 0: buf 1024, len 65536
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 65536))
    (loop $write
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $write (i32.lt_u (local.get $i) (i32.const 65536))))
    unreachable))
