//! The slice of the kubelet's HTTPS API the apiserver calls: container logs (`kubectl logs`,
//! with `follow`, `previous`, `tailLines`, `limitBytes`) and `/healthz`. Clients must present
//! a certificate from the cluster CA, as the apiserver's kubelet client does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::Agent;

/// Query parameters of `/containerLogs`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogQuery {
    /// Stream new lines until the container stops.
    #[serde(default)]
    follow: bool,
    /// The previous run's log.
    #[serde(default)]
    previous: bool,
    /// Only the last N lines.
    tail_lines: Option<usize>,
    /// At most N bytes.
    limit_bytes: Option<usize>,
}

/// Serves the kubelet API on `listener` until the process ends.
pub async fn serve(agent: Arc<Agent>, listener: TcpListener, tls: TlsAcceptor) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .with_state(agent);
    crate::tls::serve(app, listener, tls).await;
}

async fn container_logs(
    State(agent): State<Arc<Agent>>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    Query(query): Query<LogQuery>,
) -> Response {
    let Some(dir) = agent.pod_dir(&namespace, &pod) else {
        return (
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} is not on this node\n"),
        )
            .into_response();
    };
    let logs = dir.join("logs").join(&container);
    let runs = runs(&logs);
    let chosen = if query.previous {
        runs.iter().rev().nth(1)
    } else {
        runs.last()
    };
    let Some(&run) = chosen else {
        let what = if query.previous {
            "a previous terminated"
        } else {
            "a started"
        };
        return (
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod {pod:?} has no {what} run\n"),
        )
            .into_response();
    };
    let path = logs.join(format!("{run}.log"));
    let text = std::fs::read(&path).unwrap_or_default();
    let mut start = tail_offset(&text, query.tail_lines);
    if let Some(limit) = query.limit_bytes {
        start = start.max(text.len().saturating_sub(limit));
    }
    let head = Bytes::copy_from_slice(&text[start..]);
    if !query.follow || query.previous {
        return Body::from(head).into_response();
    }
    let offset = text.len() as u64;
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(head) })
        .chain(follow(path, logs, run, offset));
    Body::from_stream(stream).into_response()
}

/// New bytes of a log file as they are written, until the run ends.
fn follow(
    path: PathBuf,
    logs: PathBuf,
    run: i32,
    offset: u64,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> {
    futures::stream::unfold((path, offset, false), move |(path, offset, done)| {
        let logs = logs.clone();
        async move {
            if done {
                return None;
            }
            loop {
                let ended =
                    path.with_extension("exited").exists() || runs(&logs).last() != Some(&run);
                let data = std::fs::read(&path).ok()?;
                if data.len() as u64 > offset {
                    let chunk = Bytes::copy_from_slice(&data[offset as usize..]);
                    return Some((Ok(chunk), (path, data.len() as u64, ended)));
                }
                if ended {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    })
}

/// The run numbers that have a log file, ascending.
fn runs(dir: &Path) -> Vec<i32> {
    let mut runs: Vec<i32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    runs.sort_unstable();
    runs
}

/// The byte offset where the last `lines` lines of `text` begin.
pub fn tail_offset(text: &[u8], lines: Option<usize>) -> usize {
    let Some(lines) = lines else { return 0 };
    if lines == 0 {
        return text.len();
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    body.iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(lines - 1)
        .map_or(0, |(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_counts_lines_from_the_end() {
        let text = b"one\ntwo\nthree\n";
        assert_eq!(&text[tail_offset(text, Some(1))..], b"three\n");
        assert_eq!(&text[tail_offset(text, Some(2))..], b"two\nthree\n");
        assert_eq!(&text[tail_offset(text, Some(10))..], text);
        assert_eq!(&text[tail_offset(text, None)..], text);
        assert_eq!(&text[tail_offset(text, Some(0))..], b"");
    }
}
