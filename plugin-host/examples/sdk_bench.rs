//! The Rust host measured the way every app SDK is (docs/benchmarks.md, "App SDKs"), with
//! the conformance taggers (`sdk/conformance/plugins/tagger-v1.wasm` / `tagger-v2.wasm`,
//! built by `sdk/conformance/build.sh`), printing one JSON line:
//!
//! - `call_ns`: ns per `PluginHost::call` of tagger-v1 with a 5-byte input, one thread, after
//!   warm-up: the median of the rounds' means (the loop of `call_overhead.rs`);
//! - `swap_ns_*`: `Loaded::swap`, the atomic store alone, over alternating v1/v2 loads;
//! - `load_cached_ms_*`: `Loaded::total` of those loads, each a hit (digest, the module the
//!   host keeps in memory since its first load, which had filled `HostConfig::cache_dir`;
//!   4 instances, self-check, state hand-over, swap);
//! - p99 of single calls, steady and while another thread swaps v1↔v2 every ~10 ms.
//!
//! ```sh
//! cargo run --release -p hotload-host --example sdk_bench
//! ```

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hotload_host::{CacheOutcome, HostConfig, LoadRequest, PluginHost, sha256_digest};

const PLUGIN: &str = "tagger";
const WARMUP: u32 = 20_000;
const ROUNDS: usize = 7;
const ROUND_CALLS: u32 = 200_000;
const LOADS: usize = 100;
const P99_CALLS: usize = 20_000;
const CALL_SPACING: Duration = Duration::from_micros(50);
const SWAP_EVERY: Duration = Duration::from_millis(10);
const INPUT: &[u8] = b"hello";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk/conformance/plugins");
    let mut reqs = Vec::new();
    for name in ["tagger-v1", "tagger-v2"] {
        let path = format!("{dir}/{name}.wasm");
        let wasm = std::fs::read(&path)
            .map_err(|e| format!("{path}: {e} (run sdk/conformance/build.sh first)"))?;
        reqs.push(LoadRequest {
            plugin: PLUGIN.into(),
            revision: name.into(),
            digest: sha256_digest(&wasm),
            config: Vec::new(),
            wasm,
        });
    }
    let cache = tempfile::tempdir()?;
    let host = PluginHost::new(HostConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..HostConfig::default()
    })?;

    // The first load of each compiles and fills the caches; the timed ones below all hit.
    host.load(reqs[0].clone())?;
    host.load(reqs[1].clone())?;
    let (mut swaps, mut totals, mut hits) = (Vec::new(), Vec::new(), 0);
    for i in 0..LOADS {
        let l = host.load(reqs[i % 2].clone())?;
        hits += usize::from(l.cache == CacheOutcome::Hit);
        swaps.push(l.swap);
        totals.push(l.total);
    }
    // LOADS is even: v2 serves now; v1 for the rest.
    host.load(reqs[0].clone())?;

    for _ in 0..WARMUP {
        host.call(PLUGIN, INPUT)?;
    }
    let mut means = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..ROUND_CALLS {
            host.call(PLUGIN, INPUT)?;
        }
        means.push(t.elapsed() / ROUND_CALLS);
    }

    let steady = latencies(&host)?;
    let stop = AtomicBool::new(false);
    let swapped = AtomicUsize::new(0);
    let during = std::thread::scope(|s| {
        let swapper = s.spawn(|| -> Result<(), String> {
            let mut i = 1;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(SWAP_EVERY);
                host.load(reqs[i % 2].clone()).map_err(|e| e.to_string())?;
                swapped.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok(())
        });
        let during = latencies(&host);
        stop.store(true, Ordering::Relaxed);
        let swapper = swapper.join().expect("swapper thread panicked");
        during.and_then(|d| swapper.map(|()| d).map_err(Into::into))
    })?;

    let (p99_steady, p99_swaps) = (pct(&steady, 99), pct(&during, 99));
    let line = serde_json::json!({
        "sdk": "rust",
        "runtime": "wasmtime",
        "call_ns": pct(&means, 50).as_nanos() as u64,
        "call_ns_rounds": means.iter().map(|d| d.as_nanos() as u64).collect::<Vec<_>>(),
        "swap_ns_median": pct(&swaps, 50).as_nanos() as u64,
        "swap_ns_max": swaps.iter().max().map(|d| d.as_nanos() as u64),
        "load_cached_ms_median": ms(pct(&totals, 50)),
        "load_cached_ms_p90": ms(pct(&totals, 90)),
        "loads": LOADS,
        "cache_hits": hits,
        "calls": P99_CALLS,
        "p50_steady_us": us(pct(&steady, 50)),
        "p99_steady_us": us(p99_steady),
        "p50_swaps_us": us(pct(&during, 50)),
        "p99_swaps_us": us(p99_swaps),
        "swaps_during": swapped.load(Ordering::Relaxed),
        "p99_ratio": p99_swaps.as_secs_f64() / p99_steady.as_secs_f64(),
    });
    println!("{line}");
    Ok(())
}

/// Times P99_CALLS single calls, one every CALL_SPACING (the thread spins until the next call
/// is due: a sleep is too coarse for 50 µs), so the swapping run spans about a hundred swaps.
fn latencies(host: &PluginHost) -> Result<Vec<Duration>, Box<dyn std::error::Error>> {
    let mut lat = Vec::with_capacity(P99_CALLS);
    let mut next = Instant::now();
    for _ in 0..P99_CALLS {
        while Instant::now() < next {
            std::hint::spin_loop();
        }
        next += CALL_SPACING;
        let t = Instant::now();
        host.call(PLUGIN, INPUT)?;
        lat.push(t.elapsed());
    }
    Ok(lat)
}

fn pct(d: &[Duration], p: usize) -> Duration {
    let mut s = d.to_vec();
    s.sort();
    s[(s.len() * p / 100).min(s.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
