;; Traps (unreachable) in its self-check: the load must be refused as a self-check trap.
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param i32 i32) (result i64) (i64.const 0))
  (func (export "self_check") (result i32) (unreachable)))
