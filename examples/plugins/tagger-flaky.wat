;; Fault plugin for the analysis e2e (ABI: plugin-host/src/abi.rs): answers like tagger-v2,
;; tagged "v03:" so traffic can tell it apart, passes its self-check, and traps on exactly one
;; call in five. The cadence is an instance global: an instance answers its calls 1-4 and
;; traps on its 5th; the host then discards it and the next call runs on a fresh instance
;; (counter at 0), so exactly 20% of a sequence of calls trap, whatever the pool does.
;; Exports save_state/restore_state like tagger-v2; the cadence is not part of the state.
(module
  (memory (export "memory") 2)
  (data (i32.const 0) "v03:")
  (global $count (mut i32) (i32.const 0))
  ;; Calls this instance has taken; never handed over.
  (global $calls (mut i32) (i32.const 0))

  (func (export "alloc") (param $len i32) (result i32) (i32.const 1024))

  (func (export "handle") (param $ptr i32) (param $len i32) (result i64)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (if (i32.eq (global.get $calls) (i32.const 5)) (then (unreachable)))
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (i32.store (i32.const 32768) (i32.load (i32.const 0)))
    (memory.copy (i32.const 32772) (local.get $ptr) (local.get $len))
    (i32.store (i32.add (i32.const 32772) (local.get $len)) (i32.load (i32.const 0)))
    ;; packed (ptr << 32) | len
    (i64.or (i64.shl (i64.const 32768) (i64.const 32))
            (i64.extend_i32_u (i32.add (local.get $len) (i32.const 8)))))

  ;; The tag must be intact before this version may serve (the traps are per call only).
  (func (export "self_check") (result i32)
    (i32.ne (i32.load8_u (i32.const 0)) (i32.const 118)))

  (func (export "save_state") (result i64)
    (i32.store (i32.const 16) (global.get $count))
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 4)))

  (func (export "restore_state") (param $p i32) (param $l i32) (result i32)
    (if (i32.ne (local.get $l) (i32.const 4)) (then (return (i32.const 1))))
    (global.set $count (i32.load (local.get $p)))
    (i32.const 0)))
