//! `hotload-operator`: parse arguments, run.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

/// The Hotload operator.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Log as JSON lines.
    #[arg(long, global = true, env = "HOTLOAD_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the PluginRelease CRD (YAML), as committed in crds/.
    Crd,
    /// Run the controller against the cluster in the kubeconfig (or in-cluster config).
    Run(Box<RunArgs>),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "HOTLOAD_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Where sidecars dial in (gRPC over TLS).
    #[arg(long, env = "HOTLOAD_CHANNEL_ADDR", default_value = "0.0.0.0:8443")]
    channel_addr: SocketAddr,
    /// The most sidecar connections at once (one per pod); more wait until one closes.
    #[arg(
        long,
        env = "HOTLOAD_CHANNEL_MAX_CONNECTIONS",
        default_value_t = 20_000
    )]
    channel_max_connections: usize,
    /// The most sidecar connections from one address. Pods on the host network share their
    /// node's address, so this bounds how many of them one node can connect.
    #[arg(long, env = "HOTLOAD_CHANNEL_MAX_PER_PEER", default_value_t = 256)]
    channel_max_per_peer: usize,
    /// Where /live, /ready and /metrics are served.
    #[arg(long, env = "HOTLOAD_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    admin_addr: SocketAddr,
    /// The namespace of the leader Lease and the TLS Secret (default for the Lease: the
    /// watched namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// The leader Lease's name: one per install, so two installs in one namespace (each
    /// watching its own) do not contend for one lease.
    #[arg(long, env = "HOTLOAD_LEASE_NAME", default_value = "hotload-operator")]
    lease_name: String,
    /// This replica's identity in the election.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    webhook: WebhookArgs,
}

/// The serving certificate for the channel and the webhook: files, or a Secret.
#[derive(Args, Debug)]
struct TlsArgs {
    /// Certificate (PEM) from a file, read once.
    #[arg(
        long,
        env = "HOTLOAD_CHANNEL_TLS_CERT",
        requires = "tls_key",
        conflicts_with = "tls_secret"
    )]
    tls_cert: Option<PathBuf>,
    /// Its key (PEM).
    #[arg(long, env = "HOTLOAD_CHANNEL_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA that signed it, handed to injected sidecars.
    #[arg(long, env = "HOTLOAD_CHANNEL_TLS_CA", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// A Secret in the operator's namespace (ca.crt, tls.crt, tls.key) that the operator
    /// creates and renews.
    #[arg(long, env = "HOTLOAD_TLS_SECRET")]
    tls_secret: Option<String>,
    /// The Secret is issued by someone else (cert-manager): read it, never write it.
    #[arg(long, requires = "tls_secret")]
    tls_secret_external: bool,
    /// DNS names the serving certificate must carry (the channel and webhook Services).
    #[arg(long = "tls-dns-name")]
    tls_dns_names: Vec<String>,
    /// Lifetime of a serving certificate the operator issues, in seconds.
    #[arg(long, default_value_t = 90 * 24 * 3600)]
    tls_validity_seconds: u64,
}

/// The sidecar-injection webhook; served when `--inject-config` is given.
#[derive(Args, Debug)]
struct WebhookArgs {
    /// Injection settings (JSON: image, operatorAddr, args, resources, …).
    #[arg(long, env = "HOTLOAD_INJECT_CONFIG")]
    inject_config: Option<PathBuf>,
    /// Where the webhook listens (HTTPS).
    #[arg(long, env = "HOTLOAD_WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    webhook_addr: SocketAddr,
    /// The MutatingWebhookConfiguration whose caBundle the operator keeps current.
    #[arg(long, env = "HOTLOAD_WEBHOOK_CONFIG")]
    webhook_config: Option<String>,
}

/// See [`hotload_operator::allocator`]: jemalloc unless built without the `jemalloc` feature.
#[global_allocator]
static ALLOCATOR: hotload_operator::allocator::Allocator = hotload_operator::allocator::ALLOCATOR;

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print!("{}", hotload_operator::api::crd_yaml()?),
        Command::Run(args) => {
            init_tracing(cli.log_json);
            // Workspace builds can enable both rustls providers; pick one explicitly.
            let _ = rustls::crypto::ring::default_provider().install_default();
            tokio::runtime::Runtime::new()?.block_on(run(*args))?;
        }
    }
    Ok(())
}

async fn run(args: RunArgs) -> Result<()> {
    use hotload_operator::{admin, channel, controller, leader, metrics, registry, tls, webhook};
    let election = election(&args)?;
    let inject_config = inject_config(&args.webhook)?;
    let source = cert_source(&args)?;
    let client = kube::Client::try_default().await?;
    let registry = Arc::new(registry::Registry::default());
    let health = Arc::new(admin::Health::default());
    let metrics = Arc::new(metrics::Metrics::default());
    // First, so /live answers while the certificate is still being loaded.
    let mut admin = tokio::spawn(admin::serve(
        args.admin_addr,
        health.clone(),
        metrics.clone(),
    ));
    let certs = Arc::new(tls::CertStore::default());
    tls::start(client.clone(), source, certs.clone()).await?;
    let plugin_health = Arc::new(hotload_operator::health::HealthStore::new());
    let service = channel::ChannelService::new(
        client.clone(),
        registry.clone(),
        health.clone(),
        metrics.clone(),
        plugin_health.clone(),
    );
    let channel = channel::serve(
        bind(args.channel_addr).await?,
        service,
        &certs,
        channel::ChannelLimits::new(args.channel_max_connections, args.channel_max_per_peer),
    );
    let hook = inject_config.map(|config| webhook::Webhook {
        config,
        certs: certs.clone(),
        metrics: metrics.clone(),
    });
    let injection = async move {
        match hook {
            Some(hook) => {
                let listener = bind(args.webhook.webhook_addr).await?;
                webhook::serve(listener, hook, webhook::WebhookLimits::default()).await
            }
            None => std::future::pending().await,
        }
    };
    tracing::info!(channel_addr = %args.channel_addr, admin_addr = %args.admin_addr, "sidecar channel and admin listening");
    let election_runs = leader::run(
        leader::KubeLease::new(client.clone(), election.clone()),
        leader::Timing::for_lease(election.duration),
        health.clone(),
        {
            // A replica that steps down ends its sidecar streams: they reconnect to the new
            // leader, and what it knew of them is stale by the time it leads again.
            let registry = registry.clone();
            move |leading| {
                if !leading {
                    registry.close_all();
                }
            }
        },
    );
    tokio::select! {
        served = channel => served.context("sidecar channel server"),
        served = injection => served.context("injection webhook"),
        served = &mut admin => served.context("admin server").and_then(|s| s.context("admin server")),
        never = election_runs => match never {},
        ran = controller::run(
            client.clone(),
            registry,
            args.namespace.as_deref(),
            health.clone(),
            metrics,
            plugin_health,
        ) => ran,
        () = terminated() => {
            health.set_leading(false);
            tracing::info!("terminating: giving up the leader lease");
            if let Err(error) = leader::release(client, &election).await {
                // The lease expires on its own; a successor waits its duration.
                tracing::warn!(error = format!("{error:#}"), "could not give up the leader lease");
            }
            Ok(())
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))
}

/// The election's settings from the arguments.
fn election(args: &RunArgs) -> Result<hotload_operator::leader::Election> {
    Ok(hotload_operator::leader::Election {
        // In a pod (POD_NAME, POD_NAMESPACE) the leader labels itself, so that the channel
        // Service routes to it.
        pod: args.lease_namespace.clone().zip(args.identity.clone()),
        namespace: args
            .lease_namespace
            .clone()
            .or(args.namespace.clone())
            .context("set --lease-namespace (POD_NAMESPACE) or --namespace for the leader lease")?,
        name: args.lease_name.clone(),
        identity: args
            .identity
            .clone()
            .unwrap_or_else(|| format!("hotload-operator-{}", std::process::id())),
        duration: std::time::Duration::from_secs(15),
    })
}

/// The injection settings, when the webhook is to be served.
fn inject_config(
    args: &WebhookArgs,
) -> Result<Option<Arc<hotload_operator::inject::InjectConfig>>> {
    let Some(path) = &args.inject_config else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config = serde_json::from_str(&text)
        .with_context(|| format!("injection settings {}", path.display()))?;
    Ok(Some(Arc::new(config)))
}

/// Where the serving certificate comes from.
fn cert_source(args: &RunArgs) -> Result<hotload_operator::tls::CertSource> {
    use hotload_operator::tls::CertSource;
    let tls = &args.tls;
    Ok(match (&tls.tls_cert, &tls.tls_key, &tls.tls_secret) {
        (Some(cert), Some(key), _) => CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
            ca: tls.tls_ca.clone(),
        },
        (_, _, Some(name)) => CertSource::Secret {
            namespace: args
                .lease_namespace
                .clone()
                .context("--tls-secret needs the operator's namespace (POD_NAMESPACE)")?,
            name: name.clone(),
            managed: !tls.tls_secret_external,
            dns_names: tls.tls_dns_names.clone(),
            validity: std::time::Duration::from_secs(tls.tls_validity_seconds),
            webhook_config: args.webhook.webhook_config.clone(),
        },
        _ => {
            anyhow::bail!("give the serving certificate: --tls-secret, or --tls-cert and --tls-key")
        }
    })
}

/// SIGTERM (the kubelet stopping the pod) or Ctrl-C.
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => std::future::pending().await,
    }
}

fn init_tracing(json: bool) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: container logs are read by kubectl and log shippers.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = fmt().with_env_filter(filter).with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
