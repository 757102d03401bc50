;; The reference tagger, version 2 (ABI: plugin-host/src/abi.rs; adapted from
;; examples/plugins/tagger-v2.wat). handle() answers "v02:" + input + "v02:", the two tags
;; written in two steps so that a response mixed from two versions would show. An empty
;; input instead answers the 4-byte little-endian count of requests this instance handled,
;; so a test can see state: kept on a repeated load, handed over across a swap
;; (save_state / restore_state), reset in a fresh instance.
(module
  (memory (export "memory") 2)
  (data (i32.const 0) "v02:")
  (global $count (mut i32) (i32.const 0))

  ;; One input buffer at 1024: the host copies each input in before the call that reads it.
  (func (export "alloc") (param $len i32) (result i32) (i32.const 1024))

  (func (export "handle") (param $ptr i32) (param $len i32) (result i64)
    (if (i32.eqz (local.get $len))
      (then
        (i32.store (i32.const 16) (global.get $count))
        (return (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 4)))))
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (i32.store (i32.const 32768) (i32.load (i32.const 0)))
    (memory.copy (i32.const 32772) (local.get $ptr) (local.get $len))
    (i32.store (i32.add (i32.const 32772) (local.get $len)) (i32.load (i32.const 0)))
    ;; packed (ptr << 32) | len
    (i64.or (i64.shl (i64.const 32768) (i64.const 32))
            (i64.extend_i32_u (i32.add (local.get $len) (i32.const 8)))))

  ;; The tag must be intact ('v') before this version may serve.
  (func (export "self_check") (result i32)
    (i32.ne (i32.load8_u (i32.const 0)) (i32.const 118)))

  (func (export "save_state") (result i64)
    (i32.store (i32.const 16) (global.get $count))
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 4)))

  (func (export "restore_state") (param $p i32) (param $l i32) (result i32)
    (if (i32.ne (local.get $l) (i32.const 4)) (then (return (i32.const 1))))
    (global.set $count (i32.load (local.get $p)))
    (i32.const 0)))
