//! `bench health --pods N`: what the sidecars' health reports (one a second per pod, the
//! analysis feed) cost the operator, in CPU seconds per second and resident memory, against
//! the same fleet connected and silent.
//!
//! ```text
//!  hotload-e2e bench health ──spawns──▶ hotload-e2e bench health-server (the measured process)
//!    N simulated sidecars (sim.rs)        ChannelService + Registry + HealthStore + Metrics,
//!    one TLS connection each   ──gRPC──▶  the operator's own code, on loopback
//!                                         TokenReview: a loopback fake API server
//! ```
//!
//! Runs no cluster. The measured process runs the operator's channel server, the part that
//! health reports reach (TLS, HTTP/2, protobuf, the checks, the ownership check in the
//! registry, the health store), built from the operator crate; what it leaves out (the
//! controller, watches, status writes) does not see a health report. The API server is a
//! fake that vouches for every token (`pod:<name>`): a TokenReview per stream at connect,
//! never during the measurement. The simulated sidecars run in the driver process and are
//! not counted.
//!
//! Phases, each measured over `--seconds` after a 5-second settle: every stream open and
//! silent (the baseline: keepalive pings only), then every sidecar sending a Health report
//! (two revisions, a few hundred calls, all 20 latency buckets: [`sim::health_report`])
//! once a second.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hotload_operator::health::HealthStore;
use hotload_operator::{admin, channel, metrics, registry, tls};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::bench::apiserver::{gauge, process_cpu_seconds, process_memory_kib};
use crate::bench::sim;

/// The namespace the fake API server puts every pod in.
const NAMESPACE: &str = "bench";
/// The name in the server's certificate.
const SERVER_NAME: &str = "hotload.bench.svc";
/// How long each phase settles before it is measured.
const SETTLE: Duration = Duration::from_secs(5);

/// One phase, measured.
#[derive(Debug, Serialize)]
pub struct Phase {
    /// The server's CPU seconds (user + system) per second of the phase.
    pub cpu_seconds_per_second: f64,
    /// Its resident memory at the end of the phase, MiB.
    pub rss_mib: f64,
    /// Its peak resident memory (VmHWM) so far, MiB.
    pub peak_rss_mib: f64,
    /// Health reports that reached the store per second (revisions recorded / 2).
    pub reports_per_second: f64,
}

/// What `bench health` prints.
#[derive(Debug, Serialize)]
pub struct HealthBenchReport {
    /// Simulated sidecars, each with its own stream.
    pub pods: usize,
    /// Streams per TLS connection.
    pub streams_per_connection: usize,
    /// Seconds each phase was measured.
    pub seconds: u64,
    /// The measured process's memory allocator, the operator's (`jemalloc` or `system`).
    pub allocator: &'static str,
    /// Every stream open, no health reports.
    pub silent: Phase,
    /// Every sidecar reporting once a second.
    pub reporting: Phase,
    /// `reporting` minus `silent`: what the reports cost.
    pub health_cpu_seconds_per_second: f64,
    /// `reporting` minus `silent`, MiB.
    pub health_rss_mib: f64,
    /// Health-store series at the end (2 expected: one plugin, two revisions).
    pub series: usize,
    /// Health reports refused or from streams that no longer own their pod (0 expected).
    pub not_recorded: u64,
    /// Seconds to start the server and connect every stream (not measured above).
    pub setup_seconds: f64,
    /// The driver's CPU seconds per second while reporting (the simulated sidecars: not
    /// the operator's).
    pub driver_cpu_seconds_per_second: f64,
}

/// What the server says on its first line.
#[derive(Debug, Serialize, Deserialize)]
struct Listening {
    addr: String,
    ca: String,
}

/// What the server answers to `report`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Counters {
    connected: usize,
    recorded: u64,
    refused: u64,
    stale: u64,
    series: usize,
}

/// Runs the benchmark: `pods` simulated sidecars against a fresh server process.
pub async fn run(
    pods: usize,
    seconds: u64,
    streams_per_connection: usize,
) -> Result<HealthBenchReport> {
    let setup = Instant::now();
    let mut server = tokio::process::Command::new(std::env::current_exe()?)
        .args(["bench", "health-server", "--max-connections"])
        .arg((pods + 64).to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the health bench server")?;
    let pid = server.id().context("the server's pid")?;
    let mut to_server = server.stdin.take().context("the server's stdin")?;
    let mut from_server =
        BufReader::new(server.stdout.take().context("the server's stdout")?).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), from_server.next_line())
        .await
        .context("the server did not start in 30s")??
        .context("the server ended before it listened")?;
    let listening: Listening = serde_json::from_str(&first)?;
    let mut ask = async move || -> Result<Counters> {
        to_server.write_all(b"report\n").await?;
        let line = from_server.next_line().await?.context("the server ended")?;
        Ok(serde_json::from_str(&line)?)
    };

    let endpoint = sim::Endpoint {
        url: format!("https://{}", listening.addr),
        ca_pem: listening.ca,
        server_name: SERVER_NAME.into(),
    };
    let switch = Arc::new(AtomicBool::new(false));
    let (answers, _) = mpsc::unbounded_channel();
    let fleet: Vec<(String, String)> = (0..pods)
        .map(|i| {
            let pod = format!("fleet-{i:05}");
            let token = format!("pod:{pod}");
            (pod, token)
        })
        .collect();
    progress(&format!("connecting {pods} simulated sidecars"));
    sim::attach_all(
        &endpoint,
        NAMESPACE,
        fleet,
        streams_per_connection,
        answers,
        Some(switch.clone()),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let counters = ask().await?;
        if counters.connected == pods {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {pods} sidecars connected after 600s",
                counters.connected
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let setup_seconds = setup.elapsed().as_secs_f64();
    progress(&format!(
        "{pods} streams open after {setup_seconds:.0}s; measuring silence"
    ));

    let window = Duration::from_secs(seconds);
    tokio::time::sleep(SETTLE).await;
    let silent = measure(pid, window, &mut ask, None).await?;
    progress(&format!(
        "silent: {:.3} CPU s/s, {:.1} MiB; turning health reports on",
        silent.cpu_seconds_per_second, silent.rss_mib
    ));
    switch.store(true, Ordering::Relaxed);
    tokio::time::sleep(SETTLE).await;
    let me = std::process::id();
    let driver_before = process_cpu_seconds(me)?;
    let reporting = measure(pid, window, &mut ask, Some(pods)).await?;
    let driver = (process_cpu_seconds(me)? - driver_before) / window.as_secs_f64();
    progress(&format!(
        "reporting: {:.3} CPU s/s, {:.1} MiB, {:.0} reports/s",
        reporting.cpu_seconds_per_second, reporting.rss_mib, reporting.reports_per_second
    ));
    let end = ask().await?;
    drop(server);
    Ok(HealthBenchReport {
        pods,
        streams_per_connection,
        seconds,
        allocator: hotload_operator::allocator::NAME,
        health_cpu_seconds_per_second: reporting.cpu_seconds_per_second
            - silent.cpu_seconds_per_second,
        health_rss_mib: reporting.rss_mib - silent.rss_mib,
        silent,
        reporting,
        series: end.series,
        not_recorded: end.refused + end.stale,
        setup_seconds,
        driver_cpu_seconds_per_second: driver,
    })
}

/// Measures the server `pid` over `window`; with `pods`, checks that about one report per
/// pod and second was recorded.
async fn measure<F>(pid: u32, window: Duration, ask: &mut F, pods: Option<usize>) -> Result<Phase>
where
    F: AsyncFnMut() -> Result<Counters>,
{
    let before = ask().await?;
    let cpu = process_cpu_seconds(pid)?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let cpu = process_cpu_seconds(pid)? - cpu;
    let took = started.elapsed().as_secs_f64();
    let after = ask().await?;
    let reports_per_second = (after.recorded - before.recorded) as f64 / 2.0 / took;
    if let Some(pods) = pods {
        ensure!(
            reports_per_second > pods as f64 * 0.9,
            "{reports_per_second:.0} reports/s recorded from {pods} pods: the sidecars or the \
             server fall behind"
        );
    }
    Ok(Phase {
        cpu_seconds_per_second: cpu / took,
        rss_mib: process_memory_kib(pid, "VmRSS")? as f64 / 1024.0,
        peak_rss_mib: process_memory_kib(pid, "VmHWM")? as f64 / 1024.0,
        reports_per_second,
    })
}

fn progress(what: &str) {
    eprintln!("bench health: {what}");
}

/// The measured process (`bench health-server`, started by [`run`]): the operator's channel
/// server on loopback with a fake TokenReview, leading. Prints [`Listening`] as its first
/// line, then answers each `report` line on stdin with [`Counters`]; ends with stdin.
pub async fn serve(max_connections: usize) -> Result<()> {
    let api = fake_token_reviews().await?;
    let (certs, ca) = certificates()?;
    let registry = Arc::new(registry::Registry::default());
    let health = Arc::new(admin::Health::default());
    health.set_synced();
    health.set_leading(true);
    let metrics = Arc::new(metrics::Metrics::default());
    let store = Arc::new(HealthStore::new());
    let service = channel::ChannelService::new(
        api,
        registry.clone(),
        health,
        metrics.clone(),
        store.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // Every simulated sidecar dials from 127.0.0.1; pods have addresses of their own.
    let limits = channel::ChannelLimits::new(max_connections, max_connections);
    let served =
        tokio::spawn(async move { channel::serve(listener, service, &certs, limits).await });
    let listening = Listening {
        addr: addr.to_string(),
        ca,
    };
    let mut out = tokio::io::stdout();
    out.write_all(format!("{}\n", serde_json::to_string(&listening)?).as_bytes())
        .await?;
    out.flush().await?;
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    while let Some(command) = commands.next_line().await? {
        if served.is_finished() {
            bail!("the channel server ended");
        }
        if command.trim() != "report" {
            continue;
        }
        let text = metrics.encode();
        let count = |outcome: &str| {
            gauge(
                &text,
                &format!("hotload_health_reports_total{{outcome=\"{outcome}\"}}"),
            )
            .unwrap_or(0.0) as u64
        };
        let counters = Counters {
            connected: registry.connected(),
            recorded: count("recorded"),
            refused: count("refused"),
            stale: count("stale"),
            series: store.series(),
        };
        out.write_all(format!("{}\n", serde_json::to_string(&counters)?).as_bytes())
            .await?;
        out.flush().await?;
    }
    Ok(())
}

/// A CA and a serving certificate for [`SERVER_NAME`], in the operator's store.
fn certificates() -> Result<(Arc<tls::CertStore>, String)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "hotload-bench-ca");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec![SERVER_NAME.to_string()])?.signed_by(&key, &issuer)?;
    let store = Arc::new(tls::CertStore::default());
    store.set(hotload_operator::certs::Material {
        ca_cert: ca_cert.pem(),
        ca_key: None,
        cert: cert.pem(),
        key: key.serialize_pem(),
        previous: None,
    })?;
    Ok((store, ca_cert.pem()))
}

/// A kube client whose API server, on loopback, vouches for every token `pod:<name>` as pod
/// `<name>` in [`NAMESPACE`] (and refuses any other).
async fn fake_token_reviews() -> Result<kube::Client> {
    use axum::Json;
    use axum::routing::post;
    use serde_json::{Value, json};
    let review = |Json(review): Json<Value>| async move {
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        let status = match token.strip_prefix("pod:") {
            Some(pod) => json!({
                "authenticated": true,
                "audiences": [hotload_channel::TOKEN_AUDIENCE],
                "user": {"username": format!("system:serviceaccount:{NAMESPACE}:default"),
                         "extra": {"authentication.kubernetes.io/pod-name": [pod],
                                   "authentication.kubernetes.io/pod-uid": [format!("uid-{pod}")]}},
            }),
            None => json!({"authenticated": false, "error": "not a bench token"}),
        };
        (
            axum::http::StatusCode::CREATED,
            Json(
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                        "spec": review["spec"], "status": status}),
            ),
        )
    };
    let app =
        axum::Router::new().route("/apis/authentication.k8s.io/v1/tokenreviews", post(review));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let config = kube::Config::new(format!("http://{addr}").parse()?);
    Ok(kube::Client::try_from(config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole loop on a small fleet: the server starts in-process, the simulated
    /// sidecars attach with their tokens and their reports reach the store.
    #[tokio::test]
    async fn simulated_health_reports_reach_a_real_channel_server() {
        crate::tls::install_crypto_provider();
        let api = fake_token_reviews().await.unwrap();
        let (certs, ca) = certificates().unwrap();
        let registry = Arc::new(registry::Registry::default());
        let health = Arc::new(admin::Health::default());
        health.set_synced();
        health.set_leading(true);
        let store = Arc::new(HealthStore::new());
        let service = channel::ChannelService::new(
            api,
            registry.clone(),
            health,
            Arc::new(metrics::Metrics::default()),
            store.clone(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = channel::ChannelLimits::new(64, 64);
        tokio::spawn(async move { channel::serve(listener, service, &certs, limits).await });
        let endpoint = sim::Endpoint {
            url: format!("https://{addr}"),
            ca_pem: ca,
            server_name: SERVER_NAME.into(),
        };
        let switch = Arc::new(AtomicBool::new(true));
        let pods = vec![
            ("fleet-0".to_string(), "pod:fleet-0".to_string()),
            ("fleet-1".to_string(), "pod:fleet-1".to_string()),
        ];
        sim::attach_all(
            &endpoint,
            NAMESPACE,
            pods,
            1,
            mpsc::unbounded_channel().0,
            Some(switch),
        )
        .await
        .unwrap();
        let started = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
        for _ in 0..100 {
            let now = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1);
            let sample = store.sample(NAMESPACE, sim::HEALTH_PLUGIN, "r2", started, now);
            if sample.pods.len() == 2 {
                assert!(sample.counts.calls >= 200, "{sample:?}");
                assert!(
                    sample.counts.latency_us.iter().all(|&n| n > 0),
                    "{sample:?}"
                );
                assert_eq!(store.series(), 2);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no report from both simulated sidecars in 5 s");
    }

    #[test]
    fn a_simulated_report_is_realistic_and_valid() {
        let Some(hotload_channel::proto::sidecar_message::Kind::Health(report)) =
            sim::health_report(7, 3).kind
        else {
            panic!("a Health message");
        };
        assert_eq!(report.revisions.len(), 2);
        let (kept, refused) = channel::health_counts(&report);
        assert!(refused.is_empty(), "{refused:?}");
        let calls: u64 = kept.iter().map(|(_, c)| c.calls).sum();
        assert!((300..=500).contains(&calls), "{calls}");
        for (_, counts) in kept {
            assert!(
                counts.latency_us.iter().all(|&n| n > 0),
                "every bucket: {counts:?}"
            );
            assert_eq!(counts.latency_us.iter().sum::<u64>(), counts.calls);
        }
    }
}
