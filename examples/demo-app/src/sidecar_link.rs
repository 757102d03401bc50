//! The app's side of the sidecar's Unix-socket protocol (docs/protocol.md): connect,
//! receive `load`, hot-load through `hotload-host` off the request path, answer
//! `loaded`/`failed`. Reconnects on its own, so a sidecar restart needs nothing from the app.
//! Speaks protocol v2: the hello names this process's worker id, so the sidecar counts each
//! process of a pre-forked app as its own worker.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hotload_host::{LoadRequest, Loaded, PluginHost};
use hotload_sidecar::protocol::{AppMessage, SidecarMessage, encode_line};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The app name in `hello`.
pub const APP: &str = "hotload-demo-app";

/// The protocol version the demo speaks.
pub const PROTOCOL: u32 = 2;

/// The greeting of worker `worker`.
pub fn hello(worker: &str) -> AppMessage {
    AppMessage::Hello {
        app: APP.into(),
        worker: Some(worker.into()),
        protocol: Some(PROTOCOL),
    }
}

/// Runs the link of worker `worker` forever: connect, serve loads, reconnect with capped
/// back-off (the same worker id on every reconnect, so the sidecar sees it come back).
pub async fn run(socket: PathBuf, host: Arc<PluginHost>, worker: String) {
    let mut delay = Duration::from_millis(50);
    loop {
        match UnixStream::connect(&socket).await {
            Ok(stream) => {
                delay = Duration::from_millis(50);
                if let Err(e) = session(stream, &host, &worker).await {
                    tracing::warn!(error = %e, "sidecar link dropped");
                }
            }
            Err(e) => {
                tracing::debug!(socket = %socket.display(), error = %e, "sidecar not reachable yet")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// The health summary sent with `loaded`.
pub fn health(l: &Loaded) -> String {
    format!(
        "self-check {}; state {:?}; cache {:?}; load {:.1} ms; swap {:.1} µs",
        if l.self_checked { "passed" } else { "absent" },
        l.state,
        l.cache,
        l.total.as_secs_f64() * 1e3,
        l.swap.as_secs_f64() * 1e6
    )
}

async fn session(stream: UnixStream, host: &Arc<PluginHost>, worker: &str) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    wr.write_all(&encode_line(&hello(worker))).await?;
    let mut lines = BufReader::new(rd).lines();
    while let Some(line) = lines.next_line().await? {
        let msg: SidecarMessage = match serde_json::from_str(&line) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, line, "unreadable message from sidecar");
                continue;
            }
        };
        let reply = match msg {
            SidecarMessage::Load {
                plugin,
                revision,
                path,
                digest,
                config,
            } => {
                let host = host.clone();
                let (p, r) = (plugin.clone(), revision.clone());
                // Compiling can take milliseconds: never on a runtime worker serving requests.
                let result = tokio::task::spawn_blocking(move || {
                    let config = if config.is_null() {
                        Vec::new()
                    } else {
                        config.to_string().into_bytes()
                    };
                    let req = LoadRequest::from_file(
                        &p,
                        &r,
                        std::path::Path::new(&path),
                        &digest,
                        config,
                    )?;
                    host.load(req)
                })
                .await;
                match result {
                    Ok(Ok(loaded)) => AppMessage::Loaded {
                        plugin,
                        revision,
                        health: health(&loaded),
                    },
                    Ok(Err(e)) => AppMessage::Failed {
                        plugin,
                        revision,
                        reason: e.to_string(),
                    },
                    Err(e) => AppMessage::Failed {
                        plugin,
                        revision,
                        reason: format!("load task died: {e}"),
                    },
                }
            }
            SidecarMessage::Unload { plugin } => {
                let was_loaded = host.unload(&plugin);
                tracing::info!(plugin, was_loaded, "unloaded plugin");
                AppMessage::Unloaded { plugin }
            }
            SidecarMessage::Error { reason } => {
                tracing::warn!(reason, "sidecar refused a message");
                continue;
            }
        };
        wr.write_all(&encode_line(&reply)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_is_v2_and_names_the_worker() {
        assert_eq!(
            String::from_utf8(encode_line(&hello("4711"))).expect("utf8"),
            "{\"type\":\"hello\",\"app\":\"hotload-demo-app\",\"worker\":\"4711\",\"protocol\":2}\n"
        );
    }
}
