//! Test plugins written in Wasm text, compiled by the `wat` crate, and a host factory.
#![allow(dead_code)] // each test binary uses a different subset

use std::time::Duration;

use hotload_host::{HostConfig, LoadRequest, sha256_digest};

/// The base plugin: `handle` answers `TAG:` + input + `TAG:` (copied in two steps, so a
/// response mixed from two versions would show), or, for an empty input, the 4-byte LE
/// count of requests handled so far. `extra` adds exports (self-check, state…).
pub fn plugin(tag: &str, extra: &str) -> Vec<u8> {
    assert_eq!(tag.len(), 3, "tags are 3 bytes so `TAG:` is one word");
    let text = format!(
        r#"(module
  (memory (export "memory") 2)
  (data (i32.const 0) "{tag}:")
  (global $count (mut i32) (i32.const 0))
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
    (i64.or (i64.shl (i64.const 32768) (i64.const 32))
            (i64.extend_i32_u (i32.add (local.get $len) (i32.const 8)))))
  {extra})"#
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("test plugin {tag} does not parse: {e}"))
}

pub const SELF_CHECK_OK: &str = r#"(func (export "self_check") (result i32) (i32.const 0))"#;
pub const SELF_CHECK_STATUS_7: &str = r#"(func (export "self_check") (result i32) (i32.const 7))"#;
pub const SELF_CHECK_TRAP: &str = r#"(func (export "self_check") (result i32) (unreachable))"#;
pub const SELF_CHECK_LOOP: &str =
    r#"(func (export "self_check") (result i32) (loop $l (br $l)) (i32.const 0))"#;
/// Grows memory by 2000 pages (125 MiB), past the 16 MiB test limit.
pub const SELF_CHECK_MEMORY_BLOWUP: &str = r#"(func (export "self_check") (result i32) (drop (memory.grow (i32.const 2000))) (i32.const 0))"#;
pub const SAVE_STATE: &str = r#"(func (export "save_state") (result i64)
    (i32.store (i32.const 16) (global.get $count))
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 4)))"#;
pub const RESTORE_STATE: &str = r#"(func (export "restore_state") (param $p i32) (param $l i32) (result i32)
    (if (i32.ne (local.get $l) (i32.const 4)) (then (return (i32.const 1))))
    (global.set $count (i32.load (local.get $p)))
    (i32.const 0))"#;
pub const RESTORE_STATE_FAILS: &str =
    r#"(func (export "restore_state") (param i32 i32) (result i32) (i32.const 3))"#;

/// A plugin whose `handle` never returns.
pub fn looping_handle() -> Vec<u8> {
    wat::parse_str(
        r#"(module (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 0))
  (func (export "handle") (param i32 i32) (result i64) (loop $l (br $l)) (i64.const 0)))"#,
    )
    .expect("looping plugin parses")
}

pub fn request(plugin: &str, revision: &str, wasm: Vec<u8>) -> LoadRequest {
    LoadRequest {
        plugin: plugin.into(),
        revision: revision.into(),
        digest: sha256_digest(&wasm),
        config: Vec::new(),
        wasm,
    }
}

pub fn config() -> HostConfig {
    HostConfig {
        max_memory_bytes: 16 << 20,
        call_timeout: Duration::from_millis(200),
        epoch_tick: Duration::from_millis(5),
        instances_per_revision: 4,
        checkout_timeout: Duration::from_secs(5),
        max_plugins: 4,
        cache_dir: None,
        ..HostConfig::default()
    }
}

/// Splits a response into (tag, body) and checks both ends carry the same tag.
pub fn tag_of(resp: &[u8]) -> Option<(String, Vec<u8>)> {
    if resp.len() < 8 {
        return None;
    }
    let (head, rest) = resp.split_at(4);
    let (body, tail) = rest.split_at(rest.len() - 4);
    (head == tail).then(|| {
        (
            String::from_utf8_lossy(&head[..3]).into_owned(),
            body.to_vec(),
        )
    })
}

pub fn count(host: &hotload_host::PluginHost, plugin: &str) -> u32 {
    let out = host.call(plugin, b"").expect("count call");
    u32::from_le_bytes(out.try_into().expect("4-byte count"))
}
