//! One serving process: the plugin host, its sidecar link (one worker, `hotload_host::link`)
//! and the HTTP server.
//! Run on its own (`--workers 1`, the default) it is the whole app, exactly as before
//! pre-fork mode existed. Run as a pre-fork worker it shares the port with its siblings
//! (SO_REUSEPORT), dies with its supervisor, and drains on SIGTERM/SIGINT.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hotload_host::link::{Link, LinkOptions};
use hotload_host::{HostConfig, PluginHost};
use tokio::net::{TcpListener, TcpSocket};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::cli::Args;

/// The app name in `hello`.
pub const APP: &str = "hotload-demo-app";

/// Serves until the process is stopped (single) or drained (pre-fork worker).
pub async fn run(args: Args) -> anyhow::Result<()> {
    let Some(parent) = args.prefork_parent else {
        let (router, _link) = start_app(&args)?;
        let listener = TcpListener::bind(args.listen).await?;
        println!("hotload-demo-app listening on {}", listener.local_addr()?);
        axum::serve(listener, router).await?;
        return Ok(());
    };
    let stop = Terminations::register()?;
    die_with(parent)?;
    let (router, _link) = start_app(&args)?;
    let listener = reuseport_socket(args.listen)?.listen(1024)?;
    println!(
        "hotload-demo-app worker {} listening on {}",
        args.worker(),
        listener.local_addr()?
    );
    serve_draining(listener, router, stop, args.drain_timeout()).await
}

/// The plugin host, its sidecar link (as worker `args.worker()`) and the router over both.
/// The link runs on threads of its own until it is dropped: keep it while serving.
fn start_app(args: &Args) -> anyhow::Result<(axum::Router, Link)> {
    let worker = args.worker();
    let host = Arc::new(PluginHost::new(HostConfig {
        cache_dir: args.cache_dir.clone(),
        ..HostConfig::default()
    })?);
    if let Some(file) = &args.plugin_file {
        load_baked(&host, file)?;
    }
    let link = link_to(&args.socket, host.clone(), &worker)?;
    Ok((crate::http::router(host, &worker), link))
}

/// Starts the sidecar link of worker `worker` (loads, unloads, health every second).
pub fn link_to(
    socket: &std::path::Path,
    host: Arc<PluginHost>,
    worker: &str,
) -> std::io::Result<Link> {
    Link::spawn(
        socket,
        host,
        LinkOptions {
            app: APP.into(),
            worker: worker.into(),
            ..LinkOptions::default()
        },
    )
}

/// Loads the plugin file named by `--plugin-file` into the `handler` slot, or fails the
/// start: an app whose baked-in plugin does not load must not open its port (nor turn Ready).
/// The revision is `file:` and the first 10 hex digits of the file's digest.
pub fn load_baked(host: &PluginHost, file: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let wasm = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let digest = hotload_host::sha256_digest(&wasm);
    let short = digest.trim_start_matches("sha256:").get(..10).unwrap_or("");
    let revision = format!("file:{short}");
    let loaded = host
        .load(hotload_host::LoadRequest {
            plugin: crate::http::HANDLER.into(),
            revision: revision.clone(),
            digest,
            config: Vec::new(),
            wasm,
        })
        .with_context(|| format!("loading plugin file {}", file.display()))?;
    tracing::info!(
        file = %file.display(),
        revision,
        load_ms = loaded.total.as_secs_f64() * 1e3,
        "loaded the plugin file"
    );
    Ok(())
}

/// A socket bound to `addr` with SO_REUSEPORT: every pre-fork worker binds the same port and
/// the kernel spreads new connections across their listeners.
pub fn reuseport_socket(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// SIGTERM and SIGINT, caught from start-up so neither kills a worker mid-request.
pub struct Terminations {
    term: Signal,
    int: Signal,
}

impl Terminations {
    /// Installs the handlers.
    pub fn register() -> std::io::Result<Self> {
        Ok(Terminations {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next SIGTERM or SIGINT.
    pub async fn next(&mut self) -> nix::sys::signal::Signal {
        use nix::sys::signal::Signal::{SIGINT, SIGTERM};
        tokio::select! {
            _ = self.term.recv() => SIGTERM,
            _ = self.int.recv() => SIGINT,
        }
    }
}

/// Serves until a termination signal, then stops accepting and lets in-flight requests
/// finish, for at most `drain` (a `/stream` never finishes on its own).
async fn serve_draining(
    listener: TcpListener,
    router: axum::Router,
    mut stop: Terminations,
    drain: Duration,
) -> anyhow::Result<()> {
    let (draining, drained) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = drained.await;
        })
        .into_future();
    let deadline = async {
        let signal = stop.next().await;
        tracing::info!(%signal, drain_ms = drain.as_millis(), "draining");
        let _ = draining.send(());
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        served = server => served?,
        () = deadline => tracing::warn!("drain timed out; open requests are cut"),
    }
    Ok(())
}

/// A pre-fork worker ends with its supervisor (even a SIGKILLed one), never orphaned.
fn die_with(parent: u32) -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
    // The supervisor may have died before the line above: then nothing would signal us.
    let ppid = nix::unistd::getppid().as_raw();
    if u32::try_from(ppid).ok() != Some(parent) {
        anyhow::bail!("supervisor {parent} is gone (parent is now {ppid})");
    }
    Ok(())
}
