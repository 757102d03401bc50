;; Exports self_check with the wrong signature: an ABI violation,
;; "export `self_check` has signature ()->i64, want ()->i32".
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param i32 i32) (result i64) (i64.const 0))
  (func (export "self_check") (result i64) (i64.const 0)))
