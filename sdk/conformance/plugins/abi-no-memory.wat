;; Exports no memory: an ABI violation, "missing export `memory` (memory)".
(module
  (func (export "alloc") (param i32) (result i32) (i32.const 0))
  (func (export "handle") (param i32 i32) (result i64) (i64.const 0)))
