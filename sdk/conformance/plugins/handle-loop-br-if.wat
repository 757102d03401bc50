;; Loads fine; every handle() loops forever through a conditional branch, the shape compilers
;; give loops (`br_if` back to the loop's start, on a condition that is always true: the input
;; length is never negative). Each call must fail with a timeout at the call deadline, as with
;; handle-loop: a host whose interpreter checks for its deadline only at calls and at plain
;; `br` would never stop it.
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param i32 i32) (result i64)
    (loop $l (br_if $l (i32.ge_s (local.get 1) (i32.const 0))))
    (i64.const 0)))
