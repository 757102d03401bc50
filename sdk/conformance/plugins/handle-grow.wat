;; Loads fine; every handle() grows memory without bound, 16 pages (1 MiB) at a time, and
;; must be stopped by the host's memory limit with a memory-limit fault.
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param i32 i32) (result i64)
    (loop $grow
      (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    (i64.const 0)))
