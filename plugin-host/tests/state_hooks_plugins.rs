//! State hand-over, hooks, several independent plugins, the precompiled cache.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use hotload_host::{
    CacheOutcome, HostConfig, HostHooks, LoadError, LoadEvent, PluginHost, StateHandover,
    UnloadEvent,
};

#[test]
fn state_moves_from_save_state_to_restore_state() {
    let host = PluginHost::new(HostConfig {
        instances_per_revision: 1,
        ..config()
    })
    .expect("host");
    host.load(request("ctr", "r1", plugin("v01", SAVE_STATE)))
        .expect("r1");
    for _ in 0..5 {
        host.call("ctr", b"x").expect("call");
    }
    let loaded = host
        .load(request("ctr", "r2", plugin("v02", RESTORE_STATE)))
        .expect("r2");
    assert_eq!(loaded.state, StateHandover::Restored(4));
    assert_eq!(count(&host, "ctr"), 5, "count carried over");
    host.call("ctr", b"x").expect("call");
    assert_eq!(count(&host, "ctr"), 6);
}

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl HostHooks for Recorder {
    fn before_unload(&self, e: &UnloadEvent<'_>) {
        self.0.lock().expect("lock").push(format!(
            "before_unload {} {} -> {:?}",
            e.plugin, e.revision, e.next
        ));
    }
    fn after_load(&self, e: &LoadEvent<'_>) {
        self.0.lock().expect("lock").push(format!(
            "after_load {} {} (was {:?})",
            e.plugin, e.revision, e.previous
        ));
    }
    fn load_failed(&self, plugin: &str, revision: &str, error: &LoadError) {
        let kind = if matches!(error, LoadError::Guest { .. }) {
            "guest"
        } else {
            "other"
        };
        self.0
            .lock()
            .expect("lock")
            .push(format!("load_failed {plugin} {revision} {kind}"));
    }
}

#[test]
fn hooks_see_load_unload_and_failure_in_order() {
    let rec = Arc::new(Recorder::default());
    let host = PluginHost::with_hooks(config(), rec.clone()).expect("host");
    host.load(request("a", "r1", plugin("v01", "")))
        .expect("r1");
    host.load(request("a", "r2", plugin("v02", SELF_CHECK_TRAP)))
        .expect_err("trap");
    host.load(request("a", "r3", plugin("v03", "")))
        .expect("r3");
    assert!(host.unload("a"));
    let events = rec.0.lock().expect("lock").clone();
    assert_eq!(
        events,
        [
            "after_load a r1 (was None)",
            "load_failed a r2 guest",
            "before_unload a r1 -> Some(\"r3\")",
            "after_load a r3 (was Some(\"r1\"))",
            "before_unload a r3 -> None",
        ]
    );
    assert!(host.call("a", b"x").is_err());
}

#[test]
fn named_plugins_swap_independently() {
    let host = PluginHost::new(config()).expect("host");
    host.load(request("auth", "a1", plugin("au1", "")))
        .expect("auth");
    host.load(request("rate", "b1", plugin("ra1", "")))
        .expect("rate");
    host.load(request("auth", "a2", plugin("au2", SELF_CHECK_STATUS_7)))
        .expect_err("refused");
    host.load(request("rate", "b2", plugin("ra2", "")))
        .expect("rate swap");
    let tag = |p: &str| tag_of(&host.call(p, b"q").expect("call")).expect("tag").0;
    assert_eq!((tag("auth"), tag("rate")), ("au1".into(), "ra2".into()));
    assert_eq!(host.plugins(), ["auth", "rate"]);
}

#[test]
fn repeated_load_of_serving_revision_is_a_no_op() {
    let host = PluginHost::new(config()).expect("host");
    let wasm = plugin("v01", "");
    assert!(
        host.load(request("p", "r1", wasm.clone()))
            .expect("first")
            .swapped
    );
    host.call("p", b"x").expect("call");
    assert!(!host.load(request("p", "r1", wasm)).expect("again").swapped);
    assert_eq!(count(&host, "p"), 1, "state kept: nothing was reloaded");
}

#[test]
fn precompiled_module_is_reused_across_hosts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = HostConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..config()
    };
    let wasm = plugin("v01", "");
    let first = PluginHost::new(cfg.clone())
        .expect("host")
        .load(request("p", "r1", wasm.clone()))
        .expect("load");
    assert_eq!(first.cache, CacheOutcome::Miss);
    let second = PluginHost::new(cfg)
        .expect("host")
        .load(request("p", "r1", wasm))
        .expect("load");
    assert_eq!(second.cache, CacheOutcome::Hit);
    eprintln!(
        "compile {:?}, precompiled load {:?}",
        first.compile, second.compile
    );
}

#[test]
fn corrupt_cache_entry_is_recompiled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = HostConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..config()
    };
    let wasm = plugin("v01", "");
    PluginHost::new(cfg.clone())
        .expect("host")
        .load(request("p", "r1", wasm.clone()))
        .expect("load");
    for entry in std::fs::read_dir(dir.path()).expect("read cache") {
        std::fs::write(entry.expect("entry").path(), b"not machine code").expect("corrupt");
    }
    let again = PluginHost::new(cfg)
        .expect("host")
        .load(request("p", "r1", wasm))
        .expect("load");
    assert_eq!(again.cache, CacheOutcome::Miss);
}

#[test]
fn a_revision_loaded_again_reuses_the_module_kept_in_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = PluginHost::new(HostConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..config()
    })
    .expect("host");
    let (v1, v2) = (plugin("v01", ""), plugin("v02", ""));
    let load = |plugin: &str, rev: &str, wasm: &[u8]| {
        host.load(request(plugin, rev, wasm.to_vec()))
            .expect("load")
            .cache
    };
    assert_eq!(load("p", "r1", &v1), CacheOutcome::Miss);
    assert_eq!(load("p", "r2", &v2), CacheOutcome::Miss);
    // Not from disk: the precompiled files are gone.
    for entry in std::fs::read_dir(dir.path()).expect("read cache") {
        std::fs::remove_file(entry.expect("entry").path()).expect("remove");
    }
    assert_eq!(load("p", "r1", &v1), CacheOutcome::Hit);
    assert_eq!(
        load("q", "r1", &v1),
        CacheOutcome::Hit,
        "under another name"
    );
    for name in ["p", "q"] {
        let (tag, _) = tag_of(&host.call(name, b"x").expect("call")).expect("tagged");
        assert_eq!(tag, "v01");
    }
}

#[test]
fn without_a_cache_dir_a_revision_loaded_again_is_not_recompiled() {
    let host = PluginHost::new(config()).expect("host");
    let (v1, v2) = (plugin("v01", SAVE_STATE), plugin("v02", RESTORE_STATE));
    let first = host.load(request("ctr", "r1", v1.clone())).expect("r1");
    assert_eq!(first.cache, CacheOutcome::Uncached);
    for _ in 0..3 {
        host.call("ctr", b"x").expect("call");
    }
    let second = host.load(request("ctr", "r2", v2)).expect("r2");
    assert_eq!(second.cache, CacheOutcome::Uncached);
    let back = host
        .load(request("ctr", "r1", plugin("v01", SAVE_STATE)))
        .expect("back to r1");
    assert_eq!(back.cache, CacheOutcome::Hit);
    // A kept module still gets what a load hands over: fresh instances, and the state.
    assert_eq!(
        count(&host, "ctr"),
        0,
        "r1 restores no state: its instances start anew"
    );
    let (tag, _) = tag_of(&host.call("ctr", b"x").expect("call")).expect("tagged");
    assert_eq!(tag, "v01");
}
