;; Loads fine; every handle() loops forever through a `br_table` whose every target is the
;; loop's start (the shape of a `switch` inside a loop). Each call must fail with a timeout at
;; the call deadline, as with handle-loop.
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param i32 i32) (result i64)
    (loop $l (br_table $l $l (local.get 1)))
    (i64.const 0)))
