//! The analysis providers against real servers: a real Prometheus (Debian's
//! `/usr/bin/prometheus`, which `make deps` installs; the test fails, it does not skip, when it
//! is missing) scraping an exporter this test serves, and real HTTP(S) gates served here.
//! Everything listens on 127.0.0.1.
//!
//! The starters are small copies of `hotload_e2e::{prometheus, gate}` (which the cluster tests
//! use): hotload-e2e depends on this crate, so this crate's tests cannot depend on it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hotload_operator::api::{PrometheusCheck, Verdict, WebhookCheck};
use hotload_operator::providers::{Providers, Window};

/// Where a Prometheus started on port 0 listens (shared with the e2e crate's Prometheus).
#[path = "../../e2e/src/prometheus/announce.rs"]
mod announce;

use announce::listening_address;

const LOOPBACK: &str = "127.0.0.1:0";

fn window() -> Window {
    let end = jiff::Timestamp::now();
    Window {
        namespace: "shop".into(),
        release: "auth-filter".into(),
        plugin: "auth".into(),
        revision: "r1".into(),
        stable_revision: Some("r0".into()),
        step: Some(0),
        pods: vec!["checkout-1".into(), "checkout-2".into()],
        start: end - jiff::SignedDuration::from_secs(10),
        end,
        interval: "10s".into(),
    }
}

fn prometheus_check(address: &str, query: &str, timeout_seconds: i32) -> PrometheusCheck {
    PrometheusCheck {
        address: address.into(),
        query: query.into(),
        max: Some("0.1".into()),
        min: None,
        timeout_seconds,
    }
}

fn webhook_check(url: &str, timeout_seconds: i32) -> WebhookCheck {
    WebhookCheck {
        url: url.into(),
        timeout_seconds,
    }
}

/// Series enough that a query for all of them answers more than 1 MiB.
const BIG_SERIES: usize = 8000;

/// The exporter's fixed metrics: two revisions' calls and errors, and `demo_big`.
fn metrics() -> String {
    let mut text = String::from(
        "# TYPE demo_calls_total counter\n\
         demo_calls_total{revision=\"r1\"} 100\n\
         demo_calls_total{revision=\"r2\"} 50\n\
         # TYPE demo_errors_total counter\n\
         demo_errors_total{revision=\"r1\"} 7\n\
         demo_errors_total{revision=\"r2\"} 0\n",
    );
    let pad = "x".repeat(100);
    for i in 0..BIG_SERIES {
        text.push_str(&format!("demo_big{{i=\"{i}\",pad=\"{pad}\"}} 1\n"));
    }
    text
}

/// Serves `metrics()` at `/metrics` on loopback until the test's runtime ends.
async fn exporter() -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(LOOPBACK).await?;
    let addr = listener.local_addr()?;
    let body = metrics();
    let app = Router::new().route("/metrics", get(move || async move { body }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// A loopback port that accepts connections (the kernel's backlog does) and never answers.
fn silent_server() -> Result<(std::net::TcpListener, SocketAddr)> {
    let listener = std::net::TcpListener::bind(LOOPBACK)?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// A loopback port nobody listens on.
fn closed_port() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(LOOPBACK)?;
    listener.local_addr().map_err(Into::into)
}

fn assert_err_contains<T: std::fmt::Debug>(result: Result<T, String>, parts: &[&str]) -> String {
    let err = result.expect_err("expected an error");
    // What the analysis would show as the inconclusive message (visible with --nocapture).
    eprintln!("reason: {err}");
    for part in parts {
        assert!(err.contains(part), "{err:?} does not contain {part:?}");
    }
    err
}

/// The one Prometheus test: a real server started once, every answer shape it can give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_queries_against_a_real_server() -> Result<()> {
    let exporter = exporter().await?;
    let prometheus = Prometheus::start(exporter).await?;
    prometheus
        .wait_for_data(
            r#"demo_calls_total{revision="r1"} and on() count(demo_big) > 7999"#,
            Duration::from_secs(60),
        )
        .await?;
    let providers = Providers::new()?;
    let address = prometheus.address();
    let w = window();

    // The error ratio of the window's revision: placeholders rendered, one sample.
    let ratio = r#"sum(demo_errors_total{revision="{{revision}}"}) / sum(demo_calls_total{revision="{{revision}}"})"#;
    let value = providers
        .prometheus(&prometheus_check(address, ratio, 10), &w)
        .await;
    assert_eq!(value, Ok(0.07));
    let other = Window {
        revision: "r2".into(),
        ..w.clone()
    };
    let value = providers
        .prometheus(&prometheus_check(address, ratio, 10), &other)
        .await;
    assert_eq!(value, Ok(0.0));

    // A scalar.
    let scalar = r#"scalar(sum(demo_calls_total{revision="{{revision}}"}))"#;
    let value = providers
        .prometheus(&prometheus_check(address, scalar, 10), &w)
        .await;
    assert_eq!(value, Ok(100.0));

    // No samples: a revision nobody runs.
    let none = Window {
        revision: "r9".into(),
        ..w.clone()
    };
    assert_err_contains(
        providers
            .prometheus(&prometheus_check(address, ratio, 10), &none)
            .await,
        &["query returned no samples", address],
    );

    // The query runs at the window's end: an hour ago there was no data.
    let past = Window {
        end: w.end - jiff::SignedDuration::from_hours(1),
        ..w.clone()
    };
    assert_err_contains(
        providers
            .prometheus(&prometheus_check(address, ratio, 10), &past)
            .await,
        &["no samples"],
    );

    // Several samples: the query must aggregate.
    assert_err_contains(
        providers
            .prometheus(&prometheus_check(address, "demo_calls_total", 10), &w)
            .await,
        &["2 samples", "aggregate"],
    );

    // NaN, and +Inf.
    assert_err_contains(
        providers
            .prometheus(&prometheus_check(address, "0/0", 10), &w)
            .await,
        &["NaN"],
    );
    let inf = r#"sum(demo_calls_total{revision="r1"}) / 0"#;
    assert_err_contains(
        providers
            .prometheus(&prometheus_check(address, inf, 10), &w)
            .await,
        &["+Inf"],
    );

    // A string result.
    assert_err_contains(
        providers
            .prometheus(&prometheus_check(address, r#""hello""#, 10), &w)
            .await,
        &["string", "not a scalar"],
    );

    // A query Prometheus refuses: its own error type and message, with the HTTP status.
    assert_err_contains(
        providers
            .prometheus(&prometheus_check(address, "sum(", 10), &w)
            .await,
        &["HTTP 400", "bad_data", "parse error"],
    );

    // An answer beyond the body limit is not read.
    assert_err_contains(
        providers
            .prometheus(&prometheus_check(address, "demo_big", 10), &w)
            .await,
        &["larger than 1 MiB"],
    );

    // Credentials in the address are used, never echoed; a path prefix is kept.
    let with_secret = address.replace("http://", "http://user:s3cret@") + "/prefix?token=t0k";
    let err = assert_err_contains(
        providers
            .prometheus(&prometheus_check(&with_secret, ratio, 10), &w)
            .await,
        &["HTTP 404", address],
    );
    assert!(!err.contains("s3cret") && !err.contains("t0k"), "{err}");
    Ok(())
}

/// Not Prometheus: an HTTP server that answers 404 with a body of its own.
#[tokio::test]
async fn prometheus_address_that_is_no_prometheus() -> Result<()> {
    let exporter = exporter().await?;
    let err = assert_err_contains(
        Providers::new()?
            .prometheus(
                &prometheus_check(&format!("http://{exporter}"), "up", 5),
                &window(),
            )
            .await,
        &["HTTP 404", "(empty body)"],
    );
    assert!(
        err.starts_with(&format!("prometheus http://{exporter}/: ")),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn prometheus_that_never_answers_times_out() -> Result<()> {
    let (_held, addr) = silent_server()?;
    let started = Instant::now();
    assert_err_contains(
        Providers::new()?
            .prometheus(
                &prometheus_check(&format!("http://{addr}"), "up", 1),
                &window(),
            )
            .await,
        &["no answer within 1s"],
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    Ok(())
}

#[tokio::test]
async fn prometheus_unreachable_names_the_cause_not_the_credentials() -> Result<()> {
    let addr = closed_port()?;
    let err = assert_err_contains(
        Providers::new()?
            .prometheus(
                &prometheus_check(&format!("http://admin:hunter2@{addr}"), "up", 5),
                &window(),
            )
            .await,
        &["onnect", &addr.to_string()],
    );
    assert!(!err.contains("hunter2") && !err.contains("admin"), "{err}");
    Ok(())
}

#[tokio::test]
async fn webhook_verdicts_and_what_the_gate_is_sent() -> Result<()> {
    let gate = Gate::start(LOOPBACK.parse()?).await?;
    let providers = Providers::new()?;
    let check = webhook_check(&gate.url(), 5);
    let w = window();
    assert_eq!(
        providers.webhook(&check, &w).await,
        Ok((Verdict::Pass, String::new()))
    );
    gate.answer(Verdict::Fail, "p99 412ms > 100ms");
    assert_eq!(
        providers.webhook(&check, &w).await,
        Ok((Verdict::Fail, "p99 412ms > 100ms".into()))
    );
    gate.answer(Verdict::Inconclusive, "no traffic yet");
    assert_eq!(
        providers.webhook(&check, &w).await,
        Ok((Verdict::Inconclusive, "no traffic yet".into()))
    );
    let requests = gate.requests();
    assert_eq!(requests.len(), 3);
    let request = &requests[0];
    assert_eq!(request.path, "/gate");
    assert_eq!(request.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        request.json()?,
        serde_json::json!({
            "namespace": "shop", "release": "auth-filter", "plugin": "auth",
            "revision": "r1", "stableRevision": "r0", "step": 0,
            "pods": ["checkout-1", "checkout-2"],
            "start": w.start.to_string(), "end": w.end.to_string(), "interval": "10s",
        })
    );
    Ok(())
}

#[tokio::test]
async fn webhook_errors_are_no_verdict() -> Result<()> {
    let gate = Gate::start(LOOPBACK.parse()?).await?;
    let providers = Providers::new()?;
    let w = window();
    let secret_url = gate.url().replace("http://", "http://user:s3cret@") + "?token=t0k";
    let check = webhook_check(&secret_url, 5);

    gate.answer_raw(500, &[], "database down");
    let err = assert_err_contains(
        providers.webhook(&check, &w).await,
        &["HTTP 500: database down", &gate.url()],
    );
    assert!(!err.contains("s3cret") && !err.contains("t0k"), "{err}");

    gate.answer_raw(200, &[("content-type", "text/html")], "<html>ok</html>");
    assert_err_contains(providers.webhook(&check, &w).await, &["not {\"verdict\""]);

    gate.answer_raw(200, &[], r#"{"verdict":"approve"}"#);
    assert_err_contains(providers.webhook(&check, &w).await, &["unknown verdict"]);

    let huge = format!(
        r#"{{"verdict":"pass","reason":"{}"}}"#,
        "x".repeat(100 << 10)
    );
    gate.answer_raw(200, &[], &huge);
    assert_err_contains(providers.webhook(&check, &w).await, &["larger than 64 KiB"]);

    // A long reason is cut, its controls escaped.
    let reason = format!("\u{1b}[2J{}", "r".repeat(1000));
    gate.answer(Verdict::Fail, &reason);
    let (verdict, reason) = providers
        .webhook(&check, &w)
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(verdict, Verdict::Fail);
    assert!(reason.starts_with("\\u{1b}[2Jrr") && reason.chars().count() == 257);
    Ok(())
}

#[tokio::test]
async fn webhook_slower_than_its_timeout() -> Result<()> {
    let gate = Gate::start(LOOPBACK.parse()?).await?;
    gate.delay(Duration::from_secs(3));
    let started = Instant::now();
    assert_err_contains(
        Providers::new()?
            .webhook(&webhook_check(&gate.url(), 1), &window())
            .await,
        &["no answer within 1s"],
    );
    assert!(started.elapsed() < Duration::from_millis(2500));
    Ok(())
}

#[tokio::test]
async fn webhook_redirects_stay_on_the_gates_origin() -> Result<()> {
    let providers = Providers::new()?;
    let gate = Gate::start(LOOPBACK.parse()?).await?;
    let elsewhere = Gate::start(LOOPBACK.parse()?).await?;

    // Another origin (another port): refused, and nothing reaches it.
    gate.answer_raw(307, &[("location", &elsewhere.url())], "");
    assert_err_contains(
        providers
            .webhook(&webhook_check(&gate.url(), 5), &window())
            .await,
        &["redirect to another origin refused"],
    );
    assert!(elsewhere.requests().is_empty());

    // The same origin: followed, within a bound.
    let before = gate.requests().len();
    gate.answer_raw(307, &[("location", "/again")], "");
    assert_err_contains(
        providers
            .webhook(&webhook_check(&gate.url(), 5), &window())
            .await,
        &["more than 5 redirects"],
    );
    let paths: Vec<String> = gate.requests()[before..]
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(
        paths,
        ["/gate", "/again", "/again", "/again", "/again", "/again"]
    );
    Ok(())
}

#[tokio::test]
async fn webhook_unreachable() -> Result<()> {
    let addr = closed_port()?;
    assert_err_contains(
        Providers::new()?
            .webhook(&webhook_check(&format!("http://{addr}/gate"), 5), &window())
            .await,
        &["onnect", &format!("webhook http://{addr}/gate: ")],
    );
    Ok(())
}

/// HTTPS works (the rustls provider is in place): a gate behind a private CA is trusted
/// with that CA and refused without it.
#[tokio::test]
async fn webhook_over_https() -> Result<()> {
    let gate = Gate::start_tls(LOOPBACK.parse()?).await?;
    gate.answer(Verdict::Pass, "over TLS");
    let check = webhook_check(&gate.url(), 5);
    let ca = gate.ca_pem.clone().unwrap_or_default();
    assert_eq!(
        Providers::with_extra_roots(ca.as_bytes())?
            .webhook(&check, &window())
            .await,
        Ok((Verdict::Pass, "over TLS".into()))
    );
    assert_err_contains(
        Providers::new()?.webhook(&check, &window()).await,
        &["certificate"],
    );
    assert!(Providers::with_extra_roots(b"not a certificate").is_err());
    Ok(())
}

/// A real Prometheus on a loopback port of its own choosing, scraping `target`'s `/metrics`
/// every second, its data in a temp dir; killed on drop.
///
/// Prometheus binds port 0 and the test reads the port from its log: a port picked here
/// and released for Prometheus to bind could be taken by another test in between.
struct Prometheus {
    child: tokio::process::Child,
    dir: tempfile::TempDir,
    address: String,
}

impl Prometheus {
    async fn start(target: SocketAddr) -> Result<Self> {
        let binary = std::env::var_os("HOTLOAD_PROMETHEUS_BIN")
            .map_or_else(|| PathBuf::from("/usr/bin/prometheus"), PathBuf::from);
        ensure!(
            binary.is_file(),
            "{} not found: `make deps` installs it (Debian package prometheus), or set \
             HOTLOAD_PROMETHEUS_BIN",
            binary.display()
        );
        let dir = tempfile::tempdir()?;
        // JSON is YAML.
        let config = serde_json::json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [{
                "job_name": "demo",
                "static_configs": [{"targets": [target.to_string()]}],
            }],
        });
        std::fs::write(dir.path().join("prometheus.yml"), config.to_string())?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = tokio::process::Command::new(&binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={LOOPBACK}"))
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut prometheus = Self {
            child,
            dir,
            address: String::new(),
        };
        prometheus.wait_ready().await?;
        Ok(prometheus)
    }

    fn address(&self) -> &str {
        &self.address
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Waits until Prometheus has said where it listens and answers `/-/ready` there.
    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("prometheus exited ({status}); log:\n{}", self.log());
            }
            if self.address.is_empty()
                && let Some(listen) = listening_address(&self.log())
            {
                self.address = format!("http://{listen}");
            }
            if !self.address.is_empty()
                && let Ok(response) = http()?
                    .get(format!("{}/-/ready", self.address))
                    .send()
                    .await
                && response.status().is_success()
            {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "prometheus not ready in 60s; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `promql` returns a sample.
    async fn wait_for_data(&self, promql: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut url = reqwest::Url::parse(&format!("{}/api/v1/query", self.address))?;
        url.query_pairs_mut().append_pair("query", promql);
        loop {
            let answer: serde_json::Value = http()?.get(url.clone()).send().await?.json().await?;
            if answer["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
            {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "no data for {promql} in {timeout:?}: {answer}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// What a [`Gate`] answers.
#[derive(Clone)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    delay: Duration,
}

/// One request a [`Gate`] got.
#[derive(Clone)]
struct GateRequest {
    path: String,
    content_type: Option<String>,
    body: String,
}

impl GateRequest {
    fn json(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.body)?)
    }
}

#[derive(Default)]
struct GateState {
    answer: Option<Answer>,
    requests: Vec<GateRequest>,
}

/// A webhook gate on a free loopback port: answers every POST with what the test set
/// (pass until told otherwise), records every request; stops on drop.
struct Gate {
    state: Arc<Mutex<GateState>>,
    base: String,
    ca_pem: Option<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    async fn start(listen: SocketAddr) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (state, app) = Self::app();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            state,
            base: format!("http://{addr}"),
            ca_pem: None,
            task,
        })
    }

    /// Over HTTPS, with a certificate for its IP from a CA of its own (`ca_pem`).
    async fn start_tls(listen: SocketAddr) -> Result<Self> {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::service::TowerToHyperService;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate()?;
        let cert =
            rcgen::CertificateParams::new(vec![addr.ip().to_string()])?.signed_by(&key, &issuer)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
                    .map_err(anyhow::Error::msg)?,
            )?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (state, app) = Self::app();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = http
                        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                        .await;
                });
            }
        });
        Ok(Self {
            state,
            base: format!("https://{addr}"),
            ca_pem: Some(ca_pem),
            task,
        })
    }

    fn app() -> (Arc<Mutex<GateState>>, Router) {
        let state = Arc::new(Mutex::new(GateState::default()));
        let shared = state.clone();
        let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let shared = shared.clone();
            async move { answer(&shared, uri, headers, body).await }
        });
        (state, app)
    }

    fn url(&self) -> String {
        format!("{}/gate", self.base)
    }

    fn answer(&self, verdict: Verdict, reason: &str) {
        let verdict = match verdict {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
        };
        let body = serde_json::json!({"verdict": verdict, "reason": reason}).to_string();
        self.answer_raw(200, &[("content-type", "application/json")], &body);
    }

    fn answer_raw(&self, status: u16, headers: &[(&str, &str)], body: &str) {
        if let Ok(mut state) = self.state.lock() {
            let delay = state.answer.as_ref().map_or(Duration::ZERO, |a| a.delay);
            state.answer = Some(Answer {
                status,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body: body.into(),
                delay,
            });
        }
    }

    fn delay(&self, delay: Duration) {
        if let Ok(mut state) = self.state.lock() {
            let mut answer = state.answer.clone().unwrap_or_else(pass);
            answer.delay = delay;
            state.answer = Some(answer);
        }
    }

    fn requests(&self) -> Vec<GateRequest> {
        self.state
            .lock()
            .map(|s| s.requests.clone())
            .unwrap_or_default()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn pass() -> Answer {
    Answer {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: r#"{"verdict":"pass","reason":""}"#.into(),
        delay: Duration::ZERO,
    }
}

async fn answer(state: &Mutex<GateState>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let answer = {
        let Ok(mut state) = state.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        state.requests.push(GateRequest {
            path: uri.path().into(),
            content_type: headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(Into::into),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        state.answer.clone().unwrap_or_else(pass)
    };
    tokio::time::sleep(answer.delay).await;
    let mut response = answer.body.into_response();
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    response.headers_mut().remove("content-type");
    for (name, value) in answer.headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::try_from(name),
            axum::http::HeaderValue::try_from(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// A plain client for the starters (reqwest needs the rustls provider even for HTTP).
fn http() -> Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?)
}
