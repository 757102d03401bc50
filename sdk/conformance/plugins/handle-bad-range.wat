;; Loads fine; handle() returns the packed range ptr=0x7fff0000 len=16, far outside its one
;; page of memory. The host must refuse to read it ("returned range ptr=2147418112 len=16
;; outside its memory"), never read out of bounds.
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param i32 i32) (result i64)
    (i64.or (i64.shl (i64.const 0x7fff0000) (i64.const 32)) (i64.const 16))))
