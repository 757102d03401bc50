;; Loads fine; every handle() traps (unreachable). Each call fails with a trap and the
;; faulted instance is replaced, so the plugin keeps answering (with the same trap).
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param i32 i32) (result i64) (unreachable)))
