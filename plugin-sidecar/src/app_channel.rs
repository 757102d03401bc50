//! The app channel server: a Unix socket on the shared volume. Each connection is read as
//! newline-delimited JSON (see `protocol.rs`); each connection is one worker of the app.
//! A bad line is answered with an `error` message and the connection stays usable; only a
//! line too long to resynchronise on closes it. `health` reports go to the telemetry
//! ([`crate::metrics::Telemetry::report`]), every other message to the agent.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::agent::Agent;
use crate::protocol::{
    AppMessage, MAX_LINE_BYTES, ProtocolError, SidecarMessage, encode_line, parse_app_line,
};

/// Who may connect to a socket on the shared volume (only the pod's containers see it).
#[derive(Clone, Copy, Debug)]
pub enum Access {
    /// Every container of the pod, whatever user it runs as: the app socket.
    Pod,
    /// The sidecar's own user: the control socket, which takes assignments without the
    /// operator, so an app container running as another user must not reach it.
    Sidecar,
}

/// Binds the socket (replacing a stale one left by a previous sidecar process) and gives it
/// the mode `access` asks for.
pub fn bind(path: &Path, access: Access) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    let mode = match access {
        Access::Pod => 0o666,
        Access::Sidecar => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Accepts app connections until the task is dropped.
pub async fn serve(listener: UnixListener, agent: Arc<Agent>) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let id = NEXT.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(connection(stream, id, agent.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "app socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, id: u64, agent: Arc<Agent>) {
    // The peer's process id names a worker that does not name itself.
    let peer_pid = stream
        .peer_cred()
        .ok()
        .and_then(|c| c.pid())
        .and_then(|pid| u32::try_from(pid).ok());
    let (rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<SidecarMessage>();
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if wr.write_all(&encode_line(&msg)).await.is_err() {
                break;
            }
        }
    });
    agent.app_connected(id, peer_pid, tx.clone());
    let mut reader = BufReader::new(rd);
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        number += 1;
        // `take` bounds the buffer: a peer that never sends a newline cannot grow it.
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .await;
        match read {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(connection = id, error = %e, "app socket read failed");
                break;
            }
        }
        let complete = line.last() == Some(&b'\n');
        if complete {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) && complete {
            continue;
        }
        if !complete && line.len() > MAX_LINE_BYTES {
            let reason = format!(
                "line {number}: {}; closing the connection",
                ProtocolError::TooLong
            );
            tracing::warn!(connection = id, reason, "garbage on app socket");
            let _ = tx.send(SidecarMessage::Error { reason });
            break;
        }
        match parse_app_line(&line) {
            // Counts, not part of loading: the telemetry takes them, or says why not.
            Ok(AppMessage::Health { plugins }) => {
                if let Err(why) = agent.telemetry().report(&plugins) {
                    let reason = format!("line {number}: health report refused: {why}");
                    tracing::warn!(connection = id, reason, "bad health report from the app");
                    let _ = tx.send(SidecarMessage::Error { reason });
                }
            }
            Ok(msg) => agent.app_message(id, msg),
            Err(e) => {
                let reason = format!("line {number}: {e}");
                tracing::warn!(connection = id, reason, "garbage on app socket");
                let _ = tx.send(SidecarMessage::Error { reason });
            }
        }
        if !complete {
            break;
        }
    }
    agent.app_disconnected(id);
    drop(tx);
    // Let queued replies (an error for the last line) reach the peer before closing.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), writer).await;
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[tokio::test]
    async fn the_app_socket_is_open_to_the_pod_and_the_control_socket_to_the_sidecar() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mode = |name: &str, access| {
            let path = dir.path().join(name);
            let _listener = bind(&path, access).expect("bind");
            std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777
        };
        assert_eq!(mode("app.sock", Access::Pod), 0o666);
        assert_eq!(mode("control.sock", Access::Sidecar), 0o600);
        assert_eq!(
            mode("app.sock", Access::Pod),
            0o666,
            "a stale socket is replaced"
        );
    }
}
