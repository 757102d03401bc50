;; Grows its memory without bound in its self-check, 16 pages (1 MiB) at a time. The host
;; must stop it at its memory limit with a memory-limit fault. A host that merely lets
;; memory.grow return -1 lets this self-check pass, and fails the conformance case.
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param i32 i32) (result i64) (i64.const 0))
  (func (export "self_check") (result i32)
    (loop $grow
      (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    (i32.const 0)))
