;; Takes config: configure() keeps the config bytes (up to 4 KiB) and handle() answers
;; config + "|" + input. A config whose first byte is 'f' (the JSON `false`) is refused
;; with status 9, so the load fails with "configure failed: returned status 9".
(module
  (memory (export "memory") 2)
  (global $cfg_len (mut i32) (i32.const 0))
  ;; Inputs (config included) are written at 8192; the config is kept at 4096.
  (func (export "alloc") (param i32) (result i32) (i32.const 8192))
  (func (export "configure") (param $p i32) (param $l i32) (result i32)
    (if (i32.and (i32.gt_u (local.get $l) (i32.const 0))
                 (i32.eq (i32.load8_u (local.get $p)) (i32.const 102)))
      (then (return (i32.const 9))))
    (if (i32.gt_u (local.get $l) (i32.const 4096)) (then (return (i32.const 8))))
    (memory.copy (i32.const 4096) (local.get $p) (local.get $l))
    (global.set $cfg_len (local.get $l))
    (i32.const 0))
  ;; Answer at 65536: config, '|', input.
  (func (export "handle") (param $p i32) (param $l i32) (result i64)
    (memory.copy (i32.const 65536) (i32.const 4096) (global.get $cfg_len))
    (i32.store8 (i32.add (i32.const 65536) (global.get $cfg_len)) (i32.const 124))
    (memory.copy (i32.add (i32.const 65537) (global.get $cfg_len)) (local.get $p) (local.get $l))
    (i64.or (i64.shl (i64.const 65536) (i64.const 32))
            (i64.extend_i32_u (i32.add (i32.add (global.get $cfg_len) (local.get $l)) (i32.const 1))))))
