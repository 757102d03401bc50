//! In-process wiring of the real pieces, for tests and the benchmark: the sidecar agent on
//! its Unix socket, and the demo app (host + sidecar link + HTTP server on 127.0.0.1).
//! Every hop is a real socket; only the process boundary is collapsed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;
use hotload_host::{HostConfig, HostHooks, PluginHost};
use hotload_sidecar::agent::Agent;
use hotload_sidecar::assignment::{AssignOutcome, Assignment};
use hotload_sidecar::cli::{Cli, Command};
use hotload_sidecar::digest::Sha256Digest;
use hotload_sidecar::store::Store;

/// The example plugin, version 1 (Wasm text).
pub const V1_WAT: &str = include_str!("../../plugins/tagger-v1.wat");
/// The example plugin, version 2 (Wasm text).
pub const V2_WAT: &str = include_str!("../../plugins/tagger-v2.wat");

/// The sidecar agent alone, serving its app socket at `<dir>/state/app.sock`.
pub struct Sidecar {
    /// The agent (assign through it).
    pub agent: Arc<Agent>,
    /// Its store / state directory.
    pub state_dir: PathBuf,
    /// The app socket.
    pub socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the agent under `dir` (must run inside a tokio runtime).
pub fn start_sidecar(dir: &Path) -> anyhow::Result<Sidecar> {
    let state_dir = dir.join("state");
    let cli = Cli::try_parse_from([
        "hotload-sidecar",
        "run",
        "--state-dir",
        &state_dir.display().to_string(),
        "--admin-addr",
        "127.0.0.1:0",
        "--ack-timeout-ms",
        "20000",
    ])?;
    let Command::Run(run) = cli.command else {
        anyhow::bail!("expected run arguments")
    };
    let agent = hotload_sidecar::cli::build_agent(&run)?;
    let socket = state_dir.join("app.sock");
    let listener =
        hotload_sidecar::app_channel::bind(&socket, hotload_sidecar::app_channel::Access::Pod)?;
    let task = tokio::spawn(hotload_sidecar::app_channel::serve(listener, agent.clone()));
    Ok(Sidecar {
        agent,
        state_dir,
        socket,
        task,
    })
}

/// The sidecar plus the demo app connected to it.
pub struct Stack {
    /// The sidecar side.
    pub sidecar: Sidecar,
    /// The demo app's HTTP address.
    pub http: SocketAddr,
    /// The demo app's plugin host.
    pub host: Arc<PluginHost>,
    /// The demo app's sidecar link (stopped with the stack).
    pub link: hotload_host::link::Link,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the sidecar and the demo app under `dir`.
pub async fn start(dir: &Path, hooks: Arc<dyn HostHooks>) -> anyhow::Result<Stack> {
    let sidecar = start_sidecar(dir)?;
    let config = HostConfig {
        cache_dir: Some(dir.join("cwasm")),
        // Deadlines are wall-clock; tests share 2 cores with builds, so be generous here.
        call_timeout: std::time::Duration::from_secs(5),
        ..HostConfig::default()
    };
    let host = Arc::new(PluginHost::with_hooks(config, hooks)?);
    let worker = std::process::id().to_string();
    let link = crate::serve::link_to(&sidecar.socket, host.clone(), &worker)?;
    let mut tasks = Vec::new();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http = tcp.local_addr()?;
    let router = crate::http::router(host.clone(), &worker);
    tasks.push(tokio::spawn(async move {
        let _ = axum::serve(tcp, router).await;
    }));
    Ok(Stack {
        sidecar,
        http,
        host,
        link,
        tasks,
    })
}

/// Puts `bytes` into the sidecar's store through its verifying commit. The HTTPS and OCI
/// paths that normally do this are tested in plugin-sidecar; the artifact URL used by
/// [`assign_to`] is never contacted because the store already holds the digest.
pub fn seed(state_dir: &Path, bytes: &[u8]) -> anyhow::Result<Sha256Digest> {
    let store = Store::open(state_dir)?;
    let digest = Sha256Digest::of(bytes);
    let mut staging = store.stage()?;
    staging.write(bytes)?;
    store.commit(staging, &digest)?;
    Ok(digest)
}

/// Assigns `digest` as `revision` of the `handler` plugin and waits for the app's answer.
pub async fn assign_to(
    agent: &Agent,
    revision: &str,
    digest: &Sha256Digest,
    config: serde_json::Value,
) -> AssignOutcome {
    agent
        .assign(Assignment {
            plugin: crate::http::HANDLER.into(),
            revision: Some(revision.into()),
            artifact: "https://artifacts.invalid/handler".into(),
            digest: digest.to_string(),
            config,
            credentials: None,
            signature_key: None,
        })
        .await
}

/// Splits `TAG:` + body + `TAG:`; `None` if the two tags differ (a mixed response).
pub fn tag_of(resp: &[u8]) -> Option<(String, Vec<u8>)> {
    if resp.len() < 8 {
        return None;
    }
    let (head, rest) = resp.split_at(4);
    let (body, tail) = rest.split_at(rest.len() - 4);
    (head == tail).then(|| {
        (
            String::from_utf8_lossy(&head[..3]).into_owned(),
            body.to_vec(),
        )
    })
}

/// A test that needs a tool this machine lacks (`make deps` installs them all): fails, unless
/// `HOTLOAD_ALLOW_SKIP` is set, so a missing tool never turns a test into a silent pass.
pub fn skip_without(tool: &str) {
    assert!(
        std::env::var_os("HOTLOAD_ALLOW_SKIP").is_some(),
        "{tool} is missing: run `make deps`, or set HOTLOAD_ALLOW_SKIP=1 to skip this test"
    );
    eprintln!("\n!!!!!!!! SKIPPED: {tool} is missing (HOTLOAD_ALLOW_SKIP) !!!!!!!!\n");
}
