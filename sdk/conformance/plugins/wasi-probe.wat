;; Probes the sandboxed WASI preview1 a plugin gets. handle() answers 6 bytes:
;;   0: errno of clock_time_get(realtime)      want 0
;;   1: errno of random_get(16 bytes)          want 0
;;   2: number of environment variables        want 0 (none are passed)
;;   3: number of arguments                    want 0 (none are passed)
;;   4: 1 if the realtime clock is after 2020  want 1 (a real clock, not a fake one)
;;   5: 1 if the 16 random bytes are not all 0 want 1
;; so a conforming host answers 00 00 00 00 01 01.
(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param i32 i32) (result i64)
    ;; scratch: clock at 256, random at 272, env counts at 288, arg counts at 296
    (i32.store8 (i32.const 512) (call $clock (i32.const 0) (i64.const 1) (i32.const 256)))
    (i32.store8 (i32.const 513) (call $random (i32.const 272) (i32.const 16)))
    (drop (call $env (i32.const 288) (i32.const 292)))
    (i32.store8 (i32.const 514) (i32.load (i32.const 288)))
    (drop (call $args (i32.const 296) (i32.const 300)))
    (i32.store8 (i32.const 515) (i32.load (i32.const 296)))
    ;; 2020-01-01T00:00:00Z = 1577836800 s
    (i32.store8 (i32.const 516)
      (i64.gt_u (i64.load (i32.const 256)) (i64.const 1577836800000000000)))
    (i32.store8 (i32.const 517)
      (i64.ne (i64.or (i64.load (i32.const 272)) (i64.load (i32.const 280))) (i64.const 0)))
    (i64.or (i64.shl (i64.const 512) (i64.const 32)) (i64.const 6))))
