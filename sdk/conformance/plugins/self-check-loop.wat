;; Loops forever in its self-check: the host must cut it off at the call deadline and
;; refuse the load as a self-check timeout.
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param i32 i32) (result i64) (i64.const 0))
  (func (export "self_check") (result i32) (loop $l (br $l)) (i32.const 0)))
