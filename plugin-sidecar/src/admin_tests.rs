use std::net::{Ipv4Addr, Ipv6Addr};

use axum::extract::connect_info::MockConnectInfo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::agent::AgentSettings;
use crate::digest::Sha256Digest;
use crate::fetch::oci::{OciPuller, PullSecrets};
use crate::fetch::{Fetcher, HttpLimits, RetryPolicy, https};
use crate::state::SidecarState;
use crate::store::Store;

/// An agent whose state assigns `auth` a revision with a secret in its config and URL.
fn agent(dir: &std::path::Path) -> Arc<Agent> {
    let store = Store::open(dir).expect("store");
    let mut state = SidecarState::default();
    let record = RevisionRecord {
        revision: "r1".into(),
        artifact: "https://robot:pw@files.example/auth.wasm?X-Amz-Signature=qq9secret#zz9frag"
            .into(),
        digest: Sha256Digest::of(b"auth"),
        config: serde_json::json!({"apiKey": "s3cret-key"}),
    };
    state.assign("auth", record, 3);
    store.save_state(&state).expect("state");
    let limits = HttpLimits::default();
    let fetcher = Fetcher::new(
        https::build_client(&limits, None).expect("client"),
        limits,
        RetryPolicy::default(),
        OciPuller::new(PullSecrets::default()),
    );
    Agent::new(store, fetcher, AgentSettings::default()).expect("agent")
}

async fn get(app: Router, path: &str) -> (StatusCode, String) {
    let request = Request::get(path).body(Body::empty()).expect("request");
    let response = TowerToHyperService::new(app)
        .call(request)
        .await
        .expect("infallible");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn only_the_pod_itself_may_see_status() {
    assert!(may_see_status(IpAddr::from([127, 0, 0, 1])));
    assert!(may_see_status(IpAddr::from([127, 3, 2, 1])));
    assert!(may_see_status(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    let mapped = IpAddr::V6(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped());
    assert!(
        may_see_status(mapped),
        "an IPv4 loopback peer on a dual-stack socket"
    );
    assert!(
        !may_see_status(IpAddr::from([10, 244, 1, 7])),
        "another pod"
    );
    let pod_mapped = IpAddr::V6(Ipv4Addr::new(10, 244, 1, 7).to_ipv6_mapped());
    assert!(!may_see_status(pod_mapped));
    assert!(!may_see_status(IpAddr::from([0, 0, 0, 0])));
}

#[tokio::test]
async fn status_refuses_another_pod_and_shows_the_pod_itself_no_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(dir.path());
    let pod = SocketAddr::from(([10, 244, 1, 7], 40000));
    let from_pod = router(agent.clone()).layer(MockConnectInfo(pod));
    let (status, body) = get(from_pod.clone(), "/status").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("only from inside the pod"), "{body}");
    assert!(!body.contains("s3cret"), "{body}");
    let (status, _) = get(from_pod, "/ready").await;
    assert_ne!(status, StatusCode::FORBIDDEN, "probes answer anyone");

    let local = router(agent).layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    let (status, body) = get(local, "/status").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for secret in [
        "s3cret-key",
        "apiKey",
        "robot",
        "pw@",
        "X-Amz-Signature",
        "qq9secret",
        "zz9frag",
    ] {
        assert!(!body.contains(secret), "{secret} shown: {body}");
    }
    let config = serde_json::json!({"apiKey": "s3cret-key"}).to_string();
    let hash: String = Sha256::digest(config.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(body.contains(&hash), "config shown by hash: {body}");
    assert!(body.contains("https://files.example/auth.wasm"), "{body}");
}

#[test]
fn urls_lose_credentials_query_and_fragment_only() {
    assert_eq!(
        redact_url("https://files.example/auth.wasm"),
        "https://files.example/auth.wasm"
    );
    let oci = format!(
        "oci://127.0.0.1:5000/team/auth:v1@sha256:{}",
        "a".repeat(64)
    );
    assert_eq!(redact_url(&oci), oci, "an OCI reference is shown whole");
    assert!(redact_url("https://u:p@h/a?sig=1").starts_with("https://h/a "));
    assert_eq!(
        config_summary(&serde_json::Value::Null),
        serde_json::Value::Null
    );
}

async fn start(limits: AdminLimits) -> SocketAddr {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(dir.path());
    // The agent keeps its files open by path only; the directory may go.
    drop(dir);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve(listener, agent, limits));
    addr
}

/// Sends `request` on a new connection and reads the answer to its end.
async fn ask(addr: SocketAddr, request: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether the server closed `tcp` within `within`.
async fn closed_within(tcp: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, tcp.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn a_flood_of_idle_connections_is_not_held_and_ready_still_answers_at_once() {
    let addr = start(AdminLimits::default()).await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    let asked = tokio::time::Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(1),
        ask(addr, "GET /ready HTTP/1.1\r\nHost: pod\r\n\r\n"),
    )
    .await
    .expect("/ready answers within a second");
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    assert!(answer.contains("ready"), "{answer}");
    assert!(asked.elapsed() < Duration::from_secs(1));
    let mut closed = 0;
    for tcp in &mut idle {
        if closed_within(tcp, Duration::from_millis(5)).await {
            closed += 1;
        }
    }
    assert!(
        closed >= 200 - 64,
        "at most 64 connections held, but only {closed} of 200 idle ones were closed"
    );
}

#[tokio::test]
async fn a_silent_connection_is_closed_and_a_request_body_refused() {
    let limits = AdminLimits {
        header_timeout: Duration::from_millis(200),
        ..AdminLimits::default()
    };
    let addr = start(limits).await;
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    silent.write_all(b"GET /rea").await.expect("half a request");
    assert!(
        closed_within(&mut silent, Duration::from_secs(2)).await,
        "headers that never end close the connection"
    );
    let answer = ask(
        addr,
        "GET /ready HTTP/1.1\r\nHost: pod\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

/// Two workers' health reports, as the app socket hands them on.
fn report(json: &str) -> Vec<crate::protocol::PluginHealth> {
    serde_json::from_str(json).expect("a report")
}

#[tokio::test]
async fn metrics_answer_any_peer_with_health_and_fetch_outcomes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(dir.path());
    let telemetry = agent.telemetry();
    telemetry
        .report(&report(
            r#"[{"plugin":"auth","revision":"r1","calls":3,"errors":{"trap":1},"latency_us":[1,0,2]}]"#,
        ))
        .expect("worker 1's report");
    telemetry
        .report(&report(
            r#"[{"plugin":"auth","revision":"r1","calls":2,"errors":{"failed":1},"latency_us":[0,0,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1]}]"#,
        ))
        .expect("worker 2's report");
    let refused = telemetry.report(&report(
        r#"[{"plugin":"auth","revision":"r1","calls":1,"errors":{"trap":2}}]"#,
    ));
    assert_eq!(
        refused,
        Err("plugin auth revision r1: 2 failed calls of 1 calls".into())
    );
    let fetched = crate::fetch::Fetched {
        path: dir.path().join("blob"),
        downloaded: true,
        attempts: 1,
    };
    let cached = crate::fetch::Fetched {
        downloaded: false,
        ..fetched.clone()
    };
    telemetry.fetched("auth", Ok(&fetched), Duration::from_millis(30));
    telemetry.fetched("auth", Ok(&cached), Duration::from_millis(1));
    let missing = crate::fetch::FetchError::NotFound {
        artifact: "https://files.example/auth.wasm".into(),
    };
    telemetry.fetched("auth", Err(&missing), Duration::from_millis(300));
    telemetry.loaded("auth");
    telemetry.failed("auth", crate::metrics::FailureCause::of_fetch(&missing));

    let pod = SocketAddr::from(([10, 244, 1, 7], 40000));
    let from_pod = router(agent.clone()).layer(MockConnectInfo(pod));
    let (status, _) = get(from_pod.clone(), "/status").await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "/status stays inside the pod"
    );
    let (status, text) = get(from_pod, "/metrics").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let mut want = vec![
        "hotload_plugin_calls_total{plugin=\"auth\",revision=\"r1\"} 5",
        "hotload_plugin_errors_total{plugin=\"auth\",revision=\"r1\",kind=\"trap\"} 1",
        "hotload_plugin_errors_total{plugin=\"auth\",revision=\"r1\",kind=\"timeout\"} 0",
        "hotload_plugin_errors_total{plugin=\"auth\",revision=\"r1\",kind=\"memory\"} 0",
        "hotload_plugin_errors_total{plugin=\"auth\",revision=\"r1\",kind=\"failed\"} 1",
        // 5 µs + 3 × 35 µs (midpoints) + 10 s for the call slower than 10 s.
        "hotload_plugin_call_duration_seconds_sum{plugin=\"auth\",revision=\"r1\"} 10.00011",
        "hotload_plugin_call_duration_seconds_count{plugin=\"auth\",revision=\"r1\"} 5",
        "hotload_plugin_call_duration_seconds_bucket{le=\"0.00001\",plugin=\"auth\",revision=\"r1\"} 1",
        "hotload_plugin_call_duration_seconds_bucket{le=\"0.00002\",plugin=\"auth\",revision=\"r1\"} 1",
    ];
    let cumulative = ["0.00005", "0.0001", "0.001", "1.0", "10.0"];
    let lines: Vec<String> = cumulative
        .iter()
        .map(|le| {
            format!("hotload_plugin_call_duration_seconds_bucket{{le=\"{le}\",plugin=\"auth\",revision=\"r1\"}} 4")
        })
        .collect();
    want.extend(lines.iter().map(String::as_str));
    want.extend([
        "hotload_plugin_call_duration_seconds_bucket{le=\"+Inf\",plugin=\"auth\",revision=\"r1\"} 5",
        "hotload_sidecar_fetches_total{plugin=\"auth\",result=\"ok\"} 2",
        "hotload_sidecar_fetches_total{plugin=\"auth\",result=\"error\"} 1",
        "hotload_sidecar_cache_hits_total{plugin=\"auth\"} 1",
        "hotload_sidecar_fetch_duration_seconds_count 2",
        "hotload_sidecar_fetch_duration_seconds_bucket{le=\"0.025\"} 0",
        "hotload_sidecar_fetch_duration_seconds_bucket{le=\"0.05\"} 1",
        "hotload_sidecar_fetch_duration_seconds_bucket{le=\"0.5\"} 2",
        "hotload_sidecar_loads_total{plugin=\"auth\",result=\"loaded\"} 1",
        "hotload_sidecar_loads_total{plugin=\"auth\",result=\"failed\"} 1",
        "hotload_sidecar_failures_total{plugin=\"auth\",cause=\"fetch\"} 1",
    ]);
    let have: Vec<&str> = text.lines().collect();
    for line in want {
        assert!(have.contains(&line), "{line} missing in\n{text}");
    }
    for hidden in ["files.example", "apiKey", "s3cret"] {
        assert!(!text.contains(hidden), "{hidden} shown: {text}");
    }
}

#[tokio::test]
async fn metrics_are_openmetrics_text_and_keep_the_four_newest_revisions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(dir.path());
    for revision in ["r1", "r2", "r3", "r4", "r5"] {
        let json = format!(r#"[{{"plugin":"auth","revision":"{revision}","calls":1}}]"#);
        agent.telemetry().report(&report(&json)).expect("report");
    }
    let request = Request::get("/metrics")
        .body(Body::empty())
        .expect("request");
    let local = router(agent).layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 1))));
    let response = TowerToHyperService::new(local)
        .call(request)
        .await
        .expect("infallible");
    assert_eq!(
        response.headers().get("content-type").map(|v| v.as_bytes()),
        Some(crate::metrics::CONTENT_TYPE.as_bytes())
    );
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&body);
    assert!(text.ends_with("# EOF\n"), "{text}");
    for kept in ["r2", "r3", "r4", "r5"] {
        let line = format!("hotload_plugin_calls_total{{plugin=\"auth\",revision=\"{kept}\"}} 1");
        assert!(text.contains(&line), "{line} missing in\n{text}");
    }
    assert!(
        !text.contains("revision=\"r1\""),
        "the oldest revision's series are gone:\n{text}"
    );
}
