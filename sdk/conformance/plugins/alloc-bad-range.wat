;; Loads fine (no configure export, so alloc is not called at load); alloc() hands out
;; 0x7ffffff0, outside its one page of memory. The host must refuse to write the input there:
;; a call with a 1-byte input fails with "returned range ptr=2147483632 len=1 outside its
;; memory".
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 0x7ffffff0))
  (func (export "handle") (param i32 i32) (result i64) (i64.const 0)))
