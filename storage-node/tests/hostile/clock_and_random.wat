;; Reads the wall clock and 16 random bytes through WASI and returns them as its payload:
;; the host hands plugins a clock frozen at 0 and a fixed random stream.
(module
  (import "wasi_snapshot_preview1" "clock_time_get"
    (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get"
    (func $random_get (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "pushdown_abi_version") (result i32) i32.const 1)
  (func (export "pushdown_alloc") (param i32) (result i32) i32.const 4096)
  (func (export "pushdown_run") (param i32 i32 i32 i32) (result i64)
    ;; status byte 0 at 103, clock at 104..112 (8-aligned), random at 112..128
    (i32.store8 (i32.const 103) (i32.const 0))
    (drop (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 104)))
    (drop (call $random_get (i32.const 112) (i32.const 16)))
    i64.const 0x0000006700000019)) ;; ptr 103, len 25
