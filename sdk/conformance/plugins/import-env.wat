;; Imports a function the host does not provide (plugins get only sandboxed WASI preview1):
;; refused with "imports cannot be satisfied".
(module
  (import "env" "now" (func $now (result i64)))
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param i32 i32) (result i64) (call $now)))
