;; Refuses any state handed to it: restore_state returns status 3. Loaded over a revision
;; that exports save_state (tagger-v1), the load must be refused with
;; "restore-state failed: returned status 3"; loaded first, it has no state to take and loads.
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param i32 i32) (result i64) (i64.const 0))
  (func (export "restore_state") (param i32 i32) (result i32) (i32.const 3)))
