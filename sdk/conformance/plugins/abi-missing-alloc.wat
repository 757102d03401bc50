;; Exports only its memory: an ABI violation, "missing export `alloc` (i32)->i32".
(module (memory (export "memory") 1))
