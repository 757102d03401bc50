//! The local control socket: one `Assignment` line in, one `AssignOutcome` line out. It is
//! what `hotload-sidecar load` talks to, and it drives exactly the path the operator channel
//! does (`Agent::assign`), so tests and debugging exercise the production path. Its socket
//! is open to the sidecar's user only (`app_channel::Access::Sidecar`).

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::agent::Agent;
use crate::assignment::{AssignOutcome, Assignment};
use crate::protocol::{MAX_LINE_BYTES, encode_line};

/// Serves assignments until the task is dropped.
pub async fn serve(listener: UnixListener, agent: Arc<Agent>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle(stream, agent.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(stream: UnixStream, agent: Arc<Agent>) {
    let (rd, mut wr) = stream.into_split();
    let mut line = Vec::new();
    let read = BufReader::new(rd)
        .take(MAX_LINE_BYTES as u64)
        .read_until(b'\n', &mut line)
        .await;
    let reply = match read.map_err(|e| e.to_string()).and_then(|_| {
        serde_json::from_slice::<Assignment>(&line).map_err(|e| format!("not an assignment: {e}"))
    }) {
        Ok(a) => encode_line(&agent.assign(a).await),
        Err(reason) => encode_line(&serde_json::json!({ "result": "error", "reason": reason })),
    };
    let _ = wr.write_all(&reply).await;
}

/// Client side, used by `hotload-sidecar load`.
pub async fn request(socket: &Path, a: &Assignment) -> anyhow::Result<AssignOutcome> {
    use anyhow::Context as _;
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("connect to sidecar control socket {}", socket.display()))?;
    let (rd, mut wr) = stream.into_split();
    wr.write_all(&encode_line(a))
        .await
        .context("send assignment")?;
    let mut line = String::new();
    BufReader::new(rd)
        .read_line(&mut line)
        .await
        .context("read outcome")?;
    serde_json::from_str(&line).with_context(|| format!("sidecar answered {line:?}"))
}
