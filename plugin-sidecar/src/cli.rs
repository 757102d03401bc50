//! Command line: `hotload-sidecar run` (the agent) and `hotload-sidecar load` (submit one
//! assignment to a running agent over its control socket and print the outcome).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::agent::{Agent, AgentSettings};
use crate::app_channel::Access;
use crate::assignment::{AssignOutcome, Assignment};
use crate::fetch::oci::{OciPuller, PullSecrets};
use crate::fetch::{Fetcher, HttpLimits, RetryPolicy, https};
use crate::readiness::ReadinessPolicy;
use crate::store::Store;

/// The per-pod Hotload agent.
#[derive(Debug, Parser)]
#[command(name = "hotload-sidecar", version, about)]
pub struct Cli {
    /// Log as JSON lines.
    #[arg(long, env = "HOTLOAD_JSON_LOGS", global = true)]
    pub json_logs: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent.
    Run(RunArgs),
    /// Ask a running agent to load a plugin and wait for the app's answer.
    Load(LoadArgs),
}

/// Where the agent keeps its files and sockets.
#[derive(Debug, Clone, Args)]
pub struct PathArgs {
    /// Directory on the shared volume for the store and the app socket.
    #[arg(long, env = "HOTLOAD_STATE_DIR", default_value = "/var/run/hotload")]
    pub state_dir: PathBuf,
    /// Control socket (default: <state-dir>/control.sock).
    #[arg(long, env = "HOTLOAD_CONTROL_SOCKET")]
    pub control_socket: Option<PathBuf>,
}

impl PathArgs {
    /// The control socket path.
    pub fn control(&self) -> PathBuf {
        self.control_socket
            .clone()
            .unwrap_or_else(|| self.state_dir.join("control.sock"))
    }
}

/// `run` options.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// State directory and control socket.
    #[command(flatten)]
    pub paths: PathArgs,
    /// App socket (default: <state-dir>/app.sock).
    #[arg(long, env = "HOTLOAD_APP_SOCKET")]
    pub app_socket: Option<PathBuf>,
    /// Admin HTTP address (/ready, /live, /status, /metrics); port 0 picks one.
    #[arg(long, env = "HOTLOAD_ADMIN_ADDR", default_value = "127.0.0.1:9901")]
    pub admin_addr: SocketAddr,
    /// Revisions per plugin kept on disk for rollback.
    #[arg(long, env = "HOTLOAD_KEEP_REVISIONS", default_value_t = 3)]
    pub keep_revisions: usize,
    /// Extra CA certificates (PEM bundle) trusted for HTTPS and registries.
    #[arg(long, env = "HOTLOAD_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
    /// Pull secret (`.dockerconfigjson`) for OCI registries.
    #[arg(long, env = "HOTLOAD_PULL_SECRET")]
    pub pull_secret: Option<PathBuf>,
    /// Largest artifact accepted, in bytes.
    #[arg(long, env = "HOTLOAD_MAX_ARTIFACT_BYTES", default_value_t = 64 << 20)]
    pub max_artifact_bytes: u64,
    /// Connect timeout, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// Longest silence while reading, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub read_timeout_ms: u64,
    /// Whole-download timeout, in milliseconds.
    #[arg(long, default_value_t = 300_000)]
    pub total_timeout_ms: u64,
    /// Download attempts per fetch (first included).
    #[arg(long, default_value_t = 4)]
    pub attempts: u32,
    /// First retry's back-off ceiling, in milliseconds.
    #[arg(long, default_value_t = 250)]
    pub backoff_ms: u64,
    /// How long an assignment waits for the app's answer, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    pub ack_timeout_ms: u64,
    /// What `/ready` waits for: `plugins` (every assigned plugin loaded by every worker of
    /// the app and, with an operator, the operator's complete set) or `always` (ready at
    /// once: the app serves without its plugins). The injection webhook writes it from the
    /// pod's `hotload.dev/readiness` annotation.
    // The webhook writes it and the chart's `sidecar.args` come after: the last one counts.
    #[arg(long, value_enum, default_value_t = Readiness::Plugins, overrides_with = "readiness")]
    pub readiness: Readiness,
    /// Report ready even before plugins are loaded (the same as `--readiness always`).
    #[arg(long)]
    pub always_ready: bool,
    /// Stay unready until at least one plugin is assigned.
    #[arg(long)]
    pub require_assignment: bool,
    /// The operator's channel, `https://host:port`; without it the sidecar takes
    /// assignments from its control socket only.
    #[command(flatten)]
    pub operator: OperatorArgs,
}

/// The `--readiness` policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Readiness {
    /// Ready when every assigned plugin is loaded by every worker (and the operator's set
    /// has arrived).
    Plugins,
    /// Always ready.
    Always,
}

/// How to reach the operator.
#[derive(Debug, Clone, Args)]
pub struct OperatorArgs {
    /// The operator's sidecar channel, `https://host:port`.
    #[arg(long = "operator-addr", env = "HOTLOAD_OPERATOR_ADDR")]
    pub addr: Option<String>,
    /// CA bundle (PEM) that signed the operator's certificate.
    #[arg(long = "operator-ca", env = "HOTLOAD_OPERATOR_CA", requires = "addr")]
    pub ca: Option<PathBuf>,
    /// The same CA bundle inline (PEM text), as the injection webhook sets it: a pod can
    /// only mount ConfigMaps of its own namespace, and the operator's CA lives in another.
    #[arg(
        long = "operator-ca-pem",
        env = "HOTLOAD_OPERATOR_CA_PEM",
        conflicts_with = "ca",
        hide_env_values = true
    )]
    pub ca_pem: Option<String>,
    /// Name the operator's certificate must carry (default: the address's host).
    #[arg(long = "operator-server-name", env = "HOTLOAD_OPERATOR_SERVER_NAME")]
    pub server_name: Option<String>,
    /// Projected service-account token with audience `hotload.dev/channel`.
    #[arg(
        long,
        env = "HOTLOAD_TOKEN_FILE",
        default_value = "/var/run/secrets/hotload/token"
    )]
    pub token_file: PathBuf,
    /// This pod's name (downward API).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// This pod's namespace (downward API).
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
}

impl OperatorArgs {
    /// The channel settings, or `None` when no operator address is given.
    pub fn settings(&self) -> anyhow::Result<Option<crate::channel::ChannelSettings>> {
        let Some(endpoint) = self.addr.clone() else {
            return Ok(None);
        };
        // tonic speaks TLS only to an https:// endpoint; anything else would send the pod's
        // token in clear.
        if !endpoint.starts_with("https://") {
            anyhow::bail!(
                "--operator-addr {endpoint}: the operator's channel must be an https:// address"
            );
        }
        let missing = |what: &str, flag: &str| {
            anyhow::anyhow!("--operator-addr {endpoint} needs {what} ({flag})")
        };
        let ca_pem = match (&self.ca, &self.ca_pem) {
            (Some(path), _) => read_mounted(path, "operator CA")?,
            (None, Some(pem)) => pem.clone().into_bytes(),
            (None, None) => {
                return Err(missing(
                    "the operator's CA",
                    "--operator-ca or --operator-ca-pem",
                ));
            }
        };
        Ok(Some(crate::channel::ChannelSettings {
            endpoint: endpoint.clone(),
            ca_pem,
            server_name: self.server_name.clone(),
            token_file: self.token_file.clone(),
            namespace: self.pod_namespace.clone().ok_or_else(|| {
                missing("the pod's namespace", "--pod-namespace or POD_NAMESPACE")
            })?,
            pod: self
                .pod_name
                .clone()
                .ok_or_else(|| missing("the pod's name", "--pod-name or POD_NAME"))?,
            backoff: (Duration::from_millis(200), Duration::from_secs(10)),
        }))
    }
}

/// `load` options.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// State directory and control socket.
    #[command(flatten)]
    pub paths: PathArgs,
    /// Plugin slot name.
    #[arg(long)]
    pub plugin: String,
    /// `https://…` or `oci://registry/repo:tag@sha256:…`.
    #[arg(long)]
    pub artifact: String,
    /// `sha256:<hex>` of the artifact.
    #[arg(long)]
    pub digest: String,
    /// Revision name (default: derived from digest and config).
    #[arg(long)]
    pub revision: Option<String>,
    /// Plugin config as JSON.
    #[arg(long)]
    pub config: Option<String>,
    /// Require a cosign signature that verifies with this PEM public key (the key itself).
    #[arg(long)]
    pub signature_key: Option<String>,
}

/// Reads a mounted file (a Secret or ConfigMap key), no larger than such a file can be.
fn read_mounted(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    crate::bounded::read_file(path, crate::bounded::MAX_MOUNTED_FILE_BYTES)
        .with_context(|| format!("read {what} {}", path.display()))
}

fn read_optional(path: Option<&Path>, what: &str) -> anyhow::Result<Option<Vec<u8>>> {
    path.map(|p| read_mounted(p, what)).transpose()
}

/// Builds the agent from `run` options.
pub fn build_agent(args: &RunArgs) -> anyhow::Result<Arc<Agent>> {
    let ca = read_optional(args.ca_bundle.as_deref(), "CA bundle")?;
    let secrets = match read_optional(args.pull_secret.as_deref(), "pull secret")? {
        Some(json) => PullSecrets::parse(&json).map_err(anyhow::Error::msg)?,
        None => PullSecrets::default(),
    };
    let limits = HttpLimits {
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        read_timeout: Duration::from_millis(args.read_timeout_ms),
        total_timeout: Duration::from_millis(args.total_timeout_ms),
        max_bytes: args.max_artifact_bytes,
    };
    let retry = RetryPolicy {
        attempts: args.attempts.max(1),
        base: Duration::from_millis(args.backoff_ms),
        ..RetryPolicy::default()
    };
    let client = https::build_client(&limits, ca.as_deref()).map_err(anyhow::Error::msg)?;
    let oci = OciPuller::new(secrets);
    let store = Store::open(&args.paths.state_dir)?;
    let readiness = if args.always_ready || args.readiness == Readiness::Always {
        ReadinessPolicy::Always
    } else {
        ReadinessPolicy::RequireLoaded {
            require_assignment: args.require_assignment,
            // Without an operator nothing will ever say the set is complete.
            require_sync: args.operator.addr.is_some(),
        }
    };
    let settings = AgentSettings {
        keep_revisions: args.keep_revisions.max(1),
        ack_timeout: Duration::from_millis(args.ack_timeout_ms),
        readiness,
    };
    Agent::new(store, Fetcher::new(client, limits, retry, oci), settings)
}

/// Runs the agent until SIGTERM or Ctrl-C.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let operator = args.operator.settings()?;
    let agent = build_agent(&args)?;
    let app_path = args
        .app_socket
        .clone()
        .unwrap_or_else(|| args.paths.state_dir.join("app.sock"));
    let control_path = args.paths.control();
    let app = crate::app_channel::bind(&app_path, Access::Pod)
        .with_context(|| format!("bind app socket {}", app_path.display()))?;
    let control = crate::app_channel::bind(&control_path, Access::Sidecar)
        .with_context(|| format!("bind control socket {}", control_path.display()))?;
    let admin = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("bind admin address {}", args.admin_addr))?;
    let admin_addr = admin.local_addr()?;
    // One machine-readable line so a supervisor or a test learns the bound addresses.
    println!(
        "hotload-sidecar admin={admin_addr} app-socket={} control-socket={}",
        app_path.display(),
        control_path.display()
    );
    tracing::info!(%admin_addr, app_socket = %app_path.display(), control_socket = %control_path.display(), "sidecar running");
    let app_task = tokio::spawn(crate::app_channel::serve(app, agent.clone()));
    let control_task = tokio::spawn(crate::control::serve(control, agent.clone()));
    let channel_task = operator.map(|settings| {
        tracing::info!(
            operator = settings.endpoint,
            pod = settings.pod,
            "dialing the operator"
        );
        tokio::spawn(crate::channel::run(agent.clone(), settings))
    });
    let admin_task = tokio::spawn(crate::admin::serve(
        admin,
        agent,
        crate::admin::AdminLimits::default(),
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
        r = admin_task => anyhow::bail!("admin server stopped: {r:?}"),
    }
    app_task.abort();
    control_task.abort();
    if let Some(task) = channel_task {
        task.abort();
    }
    let _ = std::fs::remove_file(&app_path);
    let _ = std::fs::remove_file(&control_path);
    Ok(())
}

/// Runs `load`; the exit code is 0 only when the app loaded the plugin.
pub async fn load(args: LoadArgs) -> anyhow::Result<bool> {
    let config = match &args.config {
        Some(text) => serde_json::from_str(text).context("--config is not JSON")?,
        None => serde_json::Value::Null,
    };
    let a = Assignment {
        plugin: args.plugin,
        revision: args.revision,
        artifact: args.artifact,
        digest: args.digest,
        config,
        credentials: None,
        signature_key: args.signature_key,
    };
    let outcome = crate::control::request(&args.paths.control(), &a).await?;
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(matches!(outcome, AssignOutcome::Loaded { .. }))
}

/// Sets up logging to stderr. `RUST_LOG` takes `target=level` directives (`info`,
/// `hotload_sidecar=debug,info`); a `Targets` filter rather than `EnvFilter`, whose regex
/// engine would cost the idle sidecar memory for a feature it does not need.
pub fn init_logging(json: bool) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| match spec.parse::<Targets>() {
            Ok(targets) => Some(targets),
            Err(e) => {
                eprintln!(
                    "RUST_LOG={spec:?} is not a list of target=level directives ({e}); using info"
                );
                None
            }
        })
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    // Colours only on a terminal: container logs are read by kubectl and log shippers.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry.with(fmt.json()).init();
    } else {
        registry.with(fmt).init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(addr: &str) -> OperatorArgs {
        OperatorArgs {
            addr: Some(addr.into()),
            ca: None,
            ca_pem: Some("-----BEGIN CERTIFICATE-----".into()),
            server_name: None,
            token_file: "/var/run/secrets/hotload/token".into(),
            pod_name: Some("web-1".into()),
            pod_namespace: Some("shop".into()),
        }
    }

    #[test]
    fn the_operator_is_reached_over_https_only() {
        let refused = args("http://hotload.hotload-system.svc:8443")
            .settings()
            .unwrap_err()
            .to_string();
        assert!(refused.contains("must be an https:// address"), "{refused}");
        assert!(
            refused.contains("http://hotload.hotload-system.svc:8443"),
            "{refused}"
        );
        let settings = args("https://hotload.hotload-system.svc:8443")
            .settings()
            .expect("https is accepted")
            .expect("an operator is configured");
        assert_eq!(
            (settings.namespace.as_str(), settings.pod.as_str()),
            ("shop", "web-1")
        );
    }
}
