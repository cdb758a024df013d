;; Lacks pushdown_run: refused at load.
(module
  (memory (export "memory") 1)
  (func (export "pushdown_abi_version") (result i32) i32.const 1)
  (func (export "pushdown_alloc") (param i32) (result i32) i32.const 1024))
