;; Loads fine; handle() sleeps 10 s in WASI (poll_oneoff on one relative monotonic-clock
;; subscription, as Go's time.Sleep and Rust's thread::sleep do on wasip1). A sleep is host
;; code, out of reach of the guest's interruption checks: the host must bound it by the call
;; deadline itself, so the call fails with a timeout well before 10 s.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param i32 i32) (result i64)
    ;; subscription at 0: userdata 7, tag clock, clock id monotonic, timeout 10 s, relative
    (i64.store (i32.const 0) (i64.const 7))
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 10000000000))
    (i64.store (i32.const 32) (i64.const 0))
    (i32.store16 (i32.const 40) (i32.const 0))
    (drop (call $poll (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 192)))
    (i64.const 0)))
