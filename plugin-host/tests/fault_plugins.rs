//! The fault plugins of the analysis e2e (examples/plugins/tagger-flaky.wat, tagger-slow.wat)
//! do what the analysis is meant to catch, and the health counts show it: the flaky one
//! traps on exactly one call in five, the slow one's p99 is many times tagger-v2's.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hotload_host::protocol::Counts;
use hotload_host::{HostConfig, PluginHost};

fn example(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/plugins")
        .join(name);
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A host with the demo app's production limits (the deadline is `HostConfig`'s default).
fn host() -> PluginHost {
    PluginHost::new(HostConfig::default()).expect("host")
}

fn counts_of(host: &PluginHost, revision: &str) -> Counts {
    let reports = host.take_health();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].revision, revision);
    reports[0].counts.clone()
}

#[test]
fn flaky_traps_on_exactly_one_call_in_five() {
    let host = host();
    let loaded = host
        .load(request("handler", "flaky", example("tagger-flaky.wat")))
        .expect("flaky loads");
    assert!(loaded.self_checked, "it passes its self-check");
    let mut trapped = 0;
    for i in 0..100 {
        let input = format!("req{i}");
        match host.call("handler", input.as_bytes()) {
            Ok(out) => {
                let (tag, body) = tag_of(&out).expect("one version per response");
                assert_eq!((tag.as_str(), body.as_slice()), ("v03", input.as_bytes()));
            }
            Err(e) => {
                assert!(e.to_string().contains("unreachable"), "{e}");
                assert_eq!(i % 5, 4, "call {i} trapped");
                trapped += 1;
            }
        }
    }
    assert_eq!(trapped, 20);
    let c = counts_of(&host, "flaky");
    assert_eq!((c.calls, c.errors.trap, c.errors.total()), (100, 20, 20));
}

#[test]
fn slow_answers_with_a_p99_many_times_tagger_v2s() {
    let host = host();
    host.load(request("handler", "v2", example("tagger-v2.wat")))
        .expect("v2 loads");
    for i in 0..1000 {
        host.call("handler", format!("req{i}").as_bytes())
            .expect("v2 answers");
    }
    let fast = counts_of(&host, "v2");
    let loaded = host
        .load(request("handler", "slow", example("tagger-slow.wat")))
        .expect("slow loads");
    assert!(loaded.self_checked);
    let started = Instant::now();
    for i in 0..100 {
        let input = format!("req{i}");
        let out = host
            .call("handler", input.as_bytes())
            .expect("slow answers in time");
        let (tag, body) = tag_of(&out).expect("one version per response");
        assert_eq!((tag.as_str(), body.as_slice()), ("v04", input.as_bytes()));
    }
    let per_call = started.elapsed() / 100;
    let slow = counts_of(&host, "slow");
    assert_eq!((slow.calls, slow.errors.total()), (100, 0));
    let (p99_fast, p99_slow) = (
        fast.quantile(0.99).expect("v2 timed"),
        slow.quantile(0.99).expect("slow timed"),
    );
    eprintln!("tagger-slow: {per_call:?} per call; p99 {p99_slow:?} vs tagger-v2's {p99_fast:?}");
    assert!(
        p99_slow >= p99_fast * 5,
        "p99 {p99_slow:?} is not 5x tagger-v2's {p99_fast:?}"
    );
    let p50 = slow.quantile(0.5).expect("timed");
    assert!(
        p50 >= Duration::from_millis(2) && p50 <= Duration::from_millis(50),
        "a slow call takes {p50:?} (median), meant to be about 5-10 ms"
    );
}
