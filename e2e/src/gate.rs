//! A webhook gate for analysis tests: an HTTP server that answers every POST with the
//! verdict the test has set (`{"verdict": "pass" | "fail" | "inconclusive", "reason": …}`),
//! or with any status, headers and body the test wants (errors, garbage, redirects), after
//! an optional delay, and records every request it got (path, content type, body).
//!
//! Where it listens:
//! - [`Gate::start`] / [`Gate::start_tls`] listen on the address given: loopback for tests
//!   without a cluster (the operator's provider tests).
//! - [`Gate::start_for_cluster`] listens on [`netplan::HOST_IP`] (198.18.0.2, the root
//!   namespace's end of the node link), a free port, as the artifact server does: the
//!   in-cluster operator's pod routes through its node netns, which holds the other end of
//!   that link, so [`Gate::url`] is what a release's `webhook.url` names.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::netplan;
use crate::testing::TestCa;

/// A gate's verdict, as it goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateVerdict {
    /// `"pass"`.
    Pass,
    /// `"fail"`.
    Fail,
    /// `"inconclusive"`.
    Inconclusive,
}

impl GateVerdict {
    fn wire(self) -> &'static str {
        match self {
            GateVerdict::Pass => "pass",
            GateVerdict::Fail => "fail",
            GateVerdict::Inconclusive => "inconclusive",
        }
    }
}

/// What the gate answers.
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    delay: Duration,
}

/// One request the gate got.
#[derive(Clone, Debug)]
pub struct GateRequest {
    /// Its path (no query).
    pub path: String,
    /// Its `Content-Type`, if any.
    pub content_type: Option<String>,
    /// Its body, as text (lossy).
    pub body: String,
}

impl GateRequest {
    /// The body as JSON (the window the operator sent).
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body).context("gate request body is not JSON")
    }
}

struct Shared {
    answer: Answer,
    requests: Vec<GateRequest>,
}

/// The running gate; stops when dropped. It answers `pass` until told otherwise.
pub struct Gate {
    shared: Arc<Mutex<Shared>>,
    base: String,
    /// The CA (PEM) a client must trust, for a gate started with [`Gate::start_tls`].
    pub ca_pem: Option<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    /// Starts a plain-HTTP gate on a free port of [`netplan::HOST_IP`], where the in-cluster
    /// operator reaches it (see the module docs). Needs the local cluster's network up.
    pub async fn start_for_cluster() -> Result<Self> {
        Self::start(SocketAddr::from((netplan::HOST_IP, 0)))
            .await
            .context("starting the gate on the node link's host address (is the cluster up?)")
    }

    /// Starts a plain-HTTP gate on `listen` (port 0: a free one).
    pub async fn start(listen: SocketAddr) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the gate on {listen}"))?;
        let addr = listener.local_addr()?;
        let (shared, app) = Self::app();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            shared,
            base: format!("http://{addr}"),
            ca_pem: None,
            task,
        })
    }

    /// Starts an HTTPS gate on `listen` (port 0: a free one) with a certificate for its IP
    /// address from a CA of its own ([`Gate::ca_pem`]).
    pub async fn start_tls(listen: SocketAddr) -> Result<Self> {
        crate::tls::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the gate on {listen}"))?;
        let addr = listener.local_addr()?;
        let pki = TestCa::new(&[&addr.ip().to_string()])?;
        let tls = crate::tls::acceptor_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes(), None)?;
        let (shared, app) = Self::app();
        let task = tokio::spawn(crate::tls::serve(app, listener, tls));
        Ok(Self {
            shared,
            base: format!("https://{addr}"),
            ca_pem: Some(pki.ca_pem),
            task,
        })
    }

    fn app() -> (Arc<Mutex<Shared>>, Router) {
        let shared = Arc::new(Mutex::new(Shared {
            answer: verdict_answer(GateVerdict::Pass, ""),
            requests: Vec::new(),
        }));
        let state = shared.clone();
        let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move { handle(&state, uri, headers, body).await }
        });
        (shared, app)
    }

    /// The gate's URL at `/gate`: what a release's `webhook.url` names.
    pub fn url(&self) -> String {
        self.url_at("/gate")
    }

    /// The gate's URL at `path` (it answers on every path).
    pub fn url_at(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Answers `verdict` with `reason` from now on (keeping any delay).
    pub fn answer(&self, verdict: GateVerdict, reason: &str) {
        self.set(|answer| {
            let delay = answer.delay;
            *answer = Answer {
                delay,
                ..verdict_answer(verdict, reason)
            };
        });
    }

    /// Answers HTTP `status` with `headers` and `body` from now on (keeping any delay).
    pub fn answer_raw(&self, status: u16, headers: &[(&str, &str)], body: &str) {
        self.set(|answer| {
            answer.status = status;
            answer.headers = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            answer.body = body.to_string();
        });
    }

    /// Waits `delay` before each answer from now on (a slow gate).
    pub fn delay(&self, delay: Duration) {
        self.set(|answer| answer.delay = delay);
    }

    /// Every request it got so far, oldest first.
    pub fn requests(&self) -> Vec<GateRequest> {
        self.shared
            .lock()
            .map(|s| s.requests.clone())
            .unwrap_or_default()
    }

    fn set(&self, change: impl FnOnce(&mut Answer)) {
        if let Ok(mut shared) = self.shared.lock() {
            change(&mut shared.answer);
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn verdict_answer(verdict: GateVerdict, reason: &str) -> Answer {
    Answer {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: serde_json::json!({"verdict": verdict.wire(), "reason": reason}).to_string(),
        delay: Duration::ZERO,
    }
}

async fn handle(shared: &Mutex<Shared>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let answer = {
        let Ok(mut shared) = shared.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        shared.requests.push(GateRequest {
            path: uri.path().to_string(),
            content_type: headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        shared.answer.clone()
    };
    tokio::time::sleep(answer.delay).await;
    let mut response = answer.body.into_response();
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    headers.remove("content-type");
    for (name, value) in answer.headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::try_from(name),
            axum::http::HeaderValue::try_from(value),
        ) {
            headers.insert(name, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn post(url: &str, body: &str) -> Result<(u16, String, Option<String>)> {
        let response = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok((status, response.text().await?, location))
    }

    #[tokio::test]
    async fn answers_the_verdict_set_and_records_requests() -> Result<()> {
        let gate = Gate::start("127.0.0.1:0".parse()?).await?;
        let (status, body, _) = post(&gate.url(), r#"{"revision":"r1"}"#).await?;
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_str::<Value>(&body)?,
            serde_json::json!({"verdict": "pass", "reason": ""})
        );
        gate.answer(GateVerdict::Fail, "p99 too high");
        let (_, body, _) = post(&gate.url_at("/other"), "garbage").await?;
        assert_eq!(
            serde_json::from_str::<Value>(&body)?,
            serde_json::json!({"verdict": "fail", "reason": "p99 too high"})
        );
        let requests = gate.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].path, "/gate");
        assert_eq!(requests[0].json()?["revision"], "r1");
        assert_eq!(
            requests[0].content_type.as_deref(),
            Some("application/json")
        );
        assert_eq!(requests[1].path, "/other");
        assert!(requests[1].json().is_err());
        Ok(())
    }

    #[tokio::test]
    async fn answers_raw_and_late() -> Result<()> {
        let gate = Gate::start("127.0.0.1:0".parse()?).await?;
        gate.answer_raw(307, &[("location", "http://elsewhere/")], "moved");
        gate.delay(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let (status, body, location) = post(&gate.url(), "{}").await?;
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(
            (status, body.as_str(), location.as_deref()),
            (307, "moved", Some("http://elsewhere/"))
        );
        gate.answer(GateVerdict::Inconclusive, "no data");
        let (status, body, _) = post(&gate.url(), "{}").await?;
        assert_eq!(status, 200);
        assert!(body.contains("inconclusive"));
        Ok(())
    }
}
