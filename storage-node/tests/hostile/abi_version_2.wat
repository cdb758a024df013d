;; Exports another ABI version: refused at load.
(module
  (memory (export "memory") 1)
  (func (export "pushdown_abi_version") (result i32) i32.const 2)
  (func (export "pushdown_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "pushdown_run") (param i32 i32 i32 i32) (result i64) i64.const 0))
