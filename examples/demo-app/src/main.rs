//! `hotload-demo-app`: parse arguments, run the HTTP server and the sidecar link.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use hotload_host::{HostConfig, PluginHost};

/// Demo HTTP service with a hot-loaded request handler.
#[derive(Debug, Parser)]
struct Args {
    /// HTTP listen address.
    #[arg(long, env = "DEMO_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The sidecar's app socket.
    #[arg(
        long,
        env = "HOTLOAD_APP_SOCKET",
        default_value = "/var/run/hotload/app.sock"
    )]
    socket: PathBuf,
    /// Directory for precompiled modules (app-private, not the shared volume).
    #[arg(long, env = "HOTLOAD_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let host = Arc::new(PluginHost::new(HostConfig {
        cache_dir: args.cache_dir,
        ..HostConfig::default()
    })?);
    tokio::spawn(hotload_demo_app::sidecar_link::run(
        args.socket,
        host.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("hotload-demo-app listening on {}", listener.local_addr()?);
    axum::serve(listener, hotload_demo_app::http::router(host)).await?;
    Ok(())
}
