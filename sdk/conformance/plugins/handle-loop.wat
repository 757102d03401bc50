;; Loads fine; every handle() loops forever. Each call must fail with a timeout at the
;; call deadline, and the host must replace the interrupted instance, so that calls keep
;; timing out rather than finding no free instance ("busy").
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param i32 i32) (result i64) (loop $l (br $l)) (i64.const 0)))
