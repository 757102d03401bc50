;; Its start function traps: instantiation fails, so the load is refused as an
;; instantiation failure.
(module
  (memory (export "memory") 1)
  (func $start (unreachable))
  (start $start)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param i32 i32) (result i64) (i64.const 0)))
