;; Fails its self-check with status 7: the load must be refused with
;; "self-check failed: returned status 7" and the previous revision keep serving.
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param i32 i32) (result i64) (i64.const 0))
  (func (export "self_check") (result i32) (i32.const 7)))
