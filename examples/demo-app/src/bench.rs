//! `hotload-bench`: the numbers in docs/benchmarks.md. Runs the real pieces on this machine
//! (sidecar agent, Unix socket, demo app, HTTP on 127.0.0.1) and prints a Markdown table:
//! request latency steady vs during swaps, the swap's critical section, precompiled-module
//! load time, the cost of one plugin call in the host (health counting included), and the
//! idle RSS / CPU of the real `hotload-sidecar` binary.
//! Every phase is bounded in time; run it from a release build.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use hotload_demo_app::harness;
use hotload_host::{HostConfig, HostHooks, LoadEvent, LoadRequest, PluginHost};
use hotload_sidecar::assignment::AssignOutcome;

/// Benchmark options.
#[derive(Debug, Parser)]
struct Args {
    /// Seconds of load per phase (steady, swapping).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Pause between swaps, in milliseconds.
    #[arg(long, default_value_t = 50)]
    swap_interval_ms: u64,
    /// Seconds the sidecar is left idle before RSS and CPU are read.
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    /// The `hotload-sidecar` binary (default: next to this one).
    #[arg(long)]
    sidecar_bin: Option<PathBuf>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Measure only the per-call overhead of the host (seconds, not minutes).
    #[arg(long)]
    call_overhead_only: bool,
}

/// Rounds of [`CALLS_PER_ROUND`] calls in the call-overhead measurement.
const ROUNDS: usize = 7;
/// Calls per round of the call-overhead measurement.
const CALLS_PER_ROUND: u32 = 200_000;

/// What one `PluginHost::call` costs: tagger-v2 echoing 32 bytes on one thread, the mean of
/// each round; returns (median, best) per call. The plugin does almost nothing, so this is
/// the host's own overhead: pool checkout, copies, deadline, and the health counters.
fn call_overhead() -> anyhow::Result<(Duration, Duration)> {
    let wasm = wat::parse_str(harness::V2_WAT)?;
    let host = PluginHost::new(HostConfig::default())?;
    host.load(LoadRequest {
        plugin: "p".into(),
        revision: "r".into(),
        digest: hotload_host::sha256_digest(&wasm),
        config: Vec::new(),
        wasm,
    })?;
    let input = [b'x'; 32];
    for _ in 0..CALLS_PER_ROUND / 10 {
        host.call("p", &input)?;
    }
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..CALLS_PER_ROUND {
            host.call("p", &input)?;
        }
        rounds.push(t.elapsed() / CALLS_PER_ROUND);
    }
    rounds.sort();
    Ok((rounds[ROUNDS / 2], rounds[0]))
}

/// Records the duration of every swap's critical section.
#[derive(Default)]
struct SwapTimes(Mutex<Vec<Duration>>);

impl HostHooks for SwapTimes {
    fn after_load(&self, event: &LoadEvent<'_>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event.swap);
    }
}

/// The `q` quantile (0..=1) of sorted samples, nearest-rank. Pure.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// Runs `clients` request loops until `until`; returns sorted latencies and failures.
async fn load(url: String, clients: usize, until: Instant) -> (Vec<Duration>, u64) {
    let mut workers = Vec::new();
    for w in 0..clients {
        let url = url.clone();
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let (mut lat, mut failed) = (Vec::new(), 0u64);
            let mut i = 0u64;
            while Instant::now() < until {
                let body = format!("client{w}-request{i}");
                let t = Instant::now();
                let ok = match client.post(&url).body(body.clone()).send().await {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok_and(|b| {
                        harness::tag_of(&b).is_some_and(|(_, echoed)| echoed == body.as_bytes())
                    }),
                    _ => false,
                };
                lat.push(t.elapsed());
                failed += u64::from(!ok);
                i += 1;
            }
            (lat, failed)
        }));
    }
    let (mut all, mut failed) = (Vec::new(), 0);
    for w in workers {
        if let Ok((lat, f)) = w.await {
            all.extend(lat);
            failed += f;
        }
    }
    all.sort();
    (all, failed)
}

fn row(name: &str, lat: &[Duration], failed: u64, secs: u64) -> String {
    format!(
        "| {name} | {} | {:.0} | {} | {} | {} | {failed} |",
        lat.len(),
        lat.len() as f64 / secs as f64,
        ms(quantile(lat, 0.5)),
        ms(quantile(lat, 0.99)),
        ms(quantile(lat, 1.0)),
    )
}

fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

async fn sidecar_idle(bin: &Path, dir: &Path, idle: Duration) -> anyhow::Result<(u64, u64, f64)> {
    use tokio::io::AsyncBufReadExt;
    let state = dir.join("idle-sidecar");
    let mut child = tokio::process::Command::new(bin)
        .args(["run", "--admin-addr", "127.0.0.1:0", "--state-dir"])
        .arg(&state)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let stdout = child.stdout.take().context("sidecar stdout")?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::BufReader::new(stdout).read_line(&mut line),
    )
    .await??;
    // An app connected to it, as in a pod.
    let _app = tokio::net::UnixStream::connect(state.join("app.sock")).await?;
    let pid = child.id().context("sidecar pid")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = cpu_ticks(pid).context("read /proc stat")?;
    tokio::time::sleep(idle).await;
    let t1 = cpu_ticks(pid).context("read /proc stat")?;
    let rss = proc_field(pid, "status", "VmRSS:").context("VmRSS")?;
    let hwm = proc_field(pid, "status", "VmHWM:").context("VmHWM")?;
    // Linux USER_HZ is 100 on every mainstream configuration.
    let cpu = (t1 - t0) as f64 / 100.0 / idle.as_secs_f64() * 100.0;
    child.kill().await?;
    Ok((rss, hwm, cpu))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (overhead, overhead_best) = tokio::task::spawn_blocking(call_overhead).await??;
    if args.call_overhead_only {
        println!(
            "plugin call overhead (PluginHost::call, tagger-v2, 32 B): median {} ns, best {} ns",
            overhead.as_nanos(),
            overhead_best.as_nanos()
        );
        return Ok(());
    }
    let dir = tempfile_dir()?;
    let swaps = Arc::new(SwapTimes::default());
    let stack = harness::start(&dir, swaps.clone()).await?;
    let v1 = wat::parse_str(harness::V1_WAT)?;
    let v2 = wat::parse_str(harness::V2_WAT)?;
    let agent = stack.sidecar.agent.clone();
    let d1 = harness::seed(&stack.sidecar.state_dir, &v1)?;
    anyhow::ensure!(matches!(
        harness::assign_to(&agent, "r0", &d1, serde_json::Value::Null).await,
        AssignOutcome::Loaded { .. }
    ));
    let d2 = harness::seed(&stack.sidecar.state_dir, &v2)?;
    anyhow::ensure!(matches!(
        harness::assign_to(&agent, "r1", &d2, serde_json::Value::Null).await,
        AssignOutcome::Loaded { .. }
    ));
    let url = format!("http://{}/", stack.http);
    let phase = Duration::from_secs(args.seconds);

    let _ = load(
        url.clone(),
        args.clients,
        Instant::now() + Duration::from_secs(1),
    )
    .await; // warm-up
    let (steady, steady_failed) = load(url.clone(), args.clients, Instant::now() + phase).await;

    swaps.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let until = Instant::now() + phase;
    let swapper = {
        let (agent, d1, d2) = (agent.clone(), d1.clone(), d2.clone());
        let interval = Duration::from_millis(args.swap_interval_ms);
        tokio::spawn(async move {
            let (mut n, mut refused) = (2u64, 0u64);
            while Instant::now() < until {
                let d = if n % 2 == 0 { &d1 } else { &d2 };
                if !matches!(
                    harness::assign_to(&agent, &format!("r{n}"), d, serde_json::Value::Null).await,
                    AssignOutcome::Loaded { .. }
                ) {
                    refused += 1;
                }
                n += 1;
                tokio::time::sleep(interval).await;
            }
            (n - 2, refused)
        })
    };
    let (swapping, swapping_failed) = load(url.clone(), args.clients, until).await;
    let (swap_count, refused) = swapper.await?;
    let mut crit = swaps.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    crit.sort();

    // Precompiled load: a fresh host (as after an app restart) with the cache populated.
    let (mut warm, mut cold) = (Vec::new(), Vec::new());
    for i in 0..20 {
        let req = LoadRequest {
            plugin: "p".into(),
            revision: format!("r{i}"),
            digest: d1.to_string(),
            config: Vec::new(),
            wasm: v1.clone(),
        };
        let cached = PluginHost::new(HostConfig {
            cache_dir: Some(dir.join("cwasm")),
            ..HostConfig::default()
        })?;
        warm.push(cached.load(req.clone())?);
        let uncached = PluginHost::new(HostConfig::default())?;
        cold.push(uncached.load(req)?);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        quantile(v, 0.5)
    };
    let mut warm_code: Vec<_> = warm.iter().map(|l| l.compile).collect();
    let mut warm_total: Vec<_> = warm.iter().map(|l| l.total).collect();
    let mut cold_code: Vec<_> = cold.iter().map(|l| l.compile).collect();
    let mut cold_total: Vec<_> = cold.iter().map(|l| l.total).collect();

    let bin = match args.sidecar_bin {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("hotload-sidecar"),
    };
    let idle = sidecar_idle(&bin, &dir, Duration::from_secs(args.idle_seconds)).await;

    if args.json {
        let ms_f = |d: Duration| d.as_secs_f64() * 1e3;
        let phase = |lat: &Vec<Duration>, failed: u64| {
            serde_json::json!({
                "requests": lat.len(),
                "requests_per_second": lat.len() as f64 / args.seconds as f64,
                "p50_ms": ms_f(quantile(lat, 0.5)),
                "p99_ms": ms_f(quantile(lat, 0.99)),
                "max_ms": ms_f(quantile(lat, 1.0)),
                "failed": failed,
            })
        };
        let (rss, cpu) = match &idle {
            Ok((rss, _, cpu)) => (serde_json::json!(rss), serde_json::json!(cpu)),
            Err(_) => (serde_json::Value::Null, serde_json::Value::Null),
        };
        let report = serde_json::json!({
            "steady": phase(&steady, steady_failed),
            "swapping": phase(&swapping, swapping_failed),
            "swaps": swap_count,
            "swaps_refused": refused,
            "p99_ratio": quantile(&swapping, 0.99).as_secs_f64()
                / quantile(&steady, 0.99).as_secs_f64().max(1e-9),
            "swap_critical_section_p99_us": quantile(&crit, 0.99).as_secs_f64() * 1e6,
            "precompiled_load_ms": ms_f(median(&mut warm_total)),
            "cold_load_ms": ms_f(median(&mut cold_total)),
            "call_overhead_ns": overhead.as_nanos(),
            "sidecar_idle_rss_kib": rss,
            "sidecar_idle_cpu_percent": cpu,
        });
        println!("{report}");
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }
    println!("| phase | requests | req/s | p50 | p99 | max | failed |");
    println!("|---|---|---|---|---|---|---|");
    println!("{}", row("steady", &steady, steady_failed, args.seconds));
    println!(
        "{}",
        row(
            &format!("during {swap_count} swaps"),
            &swapping,
            swapping_failed,
            args.seconds
        )
    );
    println!();
    println!(
        "p99 during swaps / steady: {:.2}",
        quantile(&swapping, 0.99).as_secs_f64() / quantile(&steady, 0.99).as_secs_f64().max(1e-9)
    );
    println!("swaps refused: {refused}");
    println!(
        "swap critical section (ArcSwap store), {} swaps: p50 {}, p99 {}, max {}",
        crit.len(),
        us(quantile(&crit, 0.5)),
        us(quantile(&crit, 0.99)),
        us(quantile(&crit, 1.0))
    );
    println!(
        "module load, median of 20: precompiled (cache hit) {} code + {} total; cold compile {} code + {} total",
        ms(median(&mut warm_code)),
        ms(median(&mut warm_total)),
        ms(median(&mut cold_code)),
        ms(median(&mut cold_total)),
    );
    println!(
        "plugin call overhead (PluginHost::call, tagger-v2, 32 B, {ROUNDS} rounds of {CALLS_PER_ROUND}): median {} ns, best {} ns",
        overhead.as_nanos(),
        overhead_best.as_nanos()
    );
    match idle {
        Ok((rss, hwm, cpu)) => println!(
            "sidecar idle ({}s, app connected): RSS {rss} KiB ({:.1} MiB), peak {hwm} KiB, CPU {cpu:.2} %",
            args.idle_seconds,
            rss as f64 / 1024.0
        ),
        Err(e) => println!("sidecar idle: not measured: {e:#}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("hotload-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_is_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }
}
