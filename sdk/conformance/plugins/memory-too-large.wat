;; Declares an initial memory of 1000 pages (62.5 MiB), over a 16 MiB limit: refused at
;; load (hosts differ in whether compilation or instantiation notices; both are a refusal
;; whose reason contains "exceeds the limit").
(module
  (memory (export "memory") 1000)
  (func (export "alloc") (param i32) (result i32) (i32.const 0))
  (func (export "handle") (param i32 i32) (result i64) (i64.const 0)))
