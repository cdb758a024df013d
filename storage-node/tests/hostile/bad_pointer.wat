;; Returns a result buffer far outside its linear memory.
(module
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
    i64.const 0xFFFF000000000064))
