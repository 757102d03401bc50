;; Fault plugin for the analysis e2e (ABI: plugin-host/src/abi.rs): answers like tagger-v2,
;; tagged "v04:", passes its self-check, but burns CPU first: 5,000,000 rounds of a
;; multiply-add chain (each round waits on the one before, so no compiler can shorten it),
;; about 5-10 ms per call on the 2-core test machine, far under the host's per-call deadline
;; (500 ms by default), so no call times out; its latency is what stands out.
(module
  (memory (export "memory") 2)
  (data (i32.const 0) "v04:")
  (global $count (mut i32) (i32.const 0))

  (func (export "alloc") (param $len i32) (result i32) (i32.const 1024))

  (func $burn
    (local $i i32) (local $x i64)
    (local.set $x (i64.extend_i32_u (global.get $count)))
    (local.set $i (i32.const 5000000))
    (loop $l
      (local.set $x (i64.add (i64.mul (local.get $x) (i64.const 6364136223846793005))
                             (i64.const 1442695040888963407)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $l (local.get $i)))
    ;; Kept in memory, so the chain is needed.
    (i64.store (i32.const 24) (local.get $x)))

  (func (export "handle") (param $ptr i32) (param $len i32) (result i64)
    (call $burn)
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (i32.store (i32.const 32768) (i32.load (i32.const 0)))
    (memory.copy (i32.const 32772) (local.get $ptr) (local.get $len))
    (i32.store (i32.add (i32.const 32772) (local.get $len)) (i32.load (i32.const 0)))
    ;; packed (ptr << 32) | len
    (i64.or (i64.shl (i64.const 32768) (i64.const 32))
            (i64.extend_i32_u (i32.add (local.get $len) (i32.const 8)))))

  (func (export "self_check") (result i32)
    (i32.ne (i32.load8_u (i32.const 0)) (i32.const 118)))

  (func (export "save_state") (result i64)
    (i32.store (i32.const 16) (global.get $count))
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 4)))

  (func (export "restore_state") (param $p i32) (param $l i32) (result i32)
    (if (i32.ne (local.get $l) (i32.const 4)) (then (return (i32.const 1))))
    (global.set $count (i32.load (local.get $p)))
    (i32.const 0)))
