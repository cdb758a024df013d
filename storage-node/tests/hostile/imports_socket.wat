;; Imports something beyond WASI preview 1: refused at load (no sockets, no host calls).
(module
  (import "env" "connect" (func (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "pushdown_abi_version") (result i32) i32.const 1)
  (func (export "pushdown_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "pushdown_run") (param i32 i32 i32 i32) (result i64) i64.const 0))
