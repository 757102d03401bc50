//! What one `PluginHost::call` costs: tagger-v2 (a 32-byte echo) called on one thread, the
//! mean of each of 7 rounds of 200,000 calls, printed as the median and the best round in ns
//! per call. The plugin does almost nothing, so this is the host's own overhead (pool
//! checkout, copy in and out, epoch deadline, health counters). Run from a release build:
//!
//! ```sh
//! cargo run --release -p hotload-host --example call_overhead
//! ```

use std::time::{Duration, Instant};

use hotload_host::{HostConfig, LoadRequest, PluginHost, sha256_digest};

const ROUNDS: usize = 7;
const CALLS: u32 = 200_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let wasm = wat::parse_str(include_str!("../../examples/plugins/tagger-v2.wat"))?;
    let host = PluginHost::new(HostConfig::default())?;
    host.load(LoadRequest {
        plugin: "p".into(),
        revision: "r".into(),
        digest: sha256_digest(&wasm),
        config: Vec::new(),
        wasm,
    })?;
    let input = [b'x'; 32];
    for _ in 0..CALLS / 10 {
        host.call("p", &input)?;
    }
    let mut rounds: Vec<Duration> = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..CALLS {
            host.call("p", &input)?;
        }
        rounds.push(t.elapsed() / CALLS);
    }
    rounds.sort();
    println!(
        "PluginHost::call overhead (tagger-v2, 32 B): median {} ns, best {} ns per call ({ROUNDS} rounds of {CALLS})",
        rounds[ROUNDS / 2].as_nanos(),
        rounds[0].as_nanos()
    );
    Ok(())
}
