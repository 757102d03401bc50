//! `hotload-operator`: parse arguments, run.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;

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
    use std::sync::Arc;
    let own_namespace = args.lease_namespace.clone();
    let election = leader::Election {
        // In a pod (POD_NAME, POD_NAMESPACE) the leader labels itself, so that the channel
        // Service routes to it.
        pod: own_namespace.clone().zip(args.identity.clone()),
        namespace: args
            .lease_namespace
            .or(args.namespace.clone())
            .context("set --lease-namespace (POD_NAMESPACE) or --namespace for the leader lease")?,
        name: args.lease_name,
        identity: args
            .identity
            .unwrap_or_else(|| format!("hotload-operator-{}", std::process::id())),
        duration: std::time::Duration::from_secs(15),
    };
    let inject_config = match &args.webhook.inject_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let config: hotload_operator::inject::InjectConfig = serde_json::from_str(&text)
                .with_context(|| format!("injection settings {}", path.display()))?;
            Some(Arc::new(config))
        }
        None => None,
    };
    let source = match (args.tls.tls_cert, args.tls.tls_key, args.tls.tls_secret) {
        (Some(cert), Some(key), _) => tls::CertSource::Files {
            cert,
            key,
            ca: args.tls.tls_ca,
        },
        (_, _, Some(name)) => tls::CertSource::Secret {
            namespace: own_namespace
                .context("--tls-secret needs the operator's namespace (POD_NAMESPACE)")?,
            name,
            managed: !args.tls.tls_secret_external,
            dns_names: args.tls.tls_dns_names,
            validity: std::time::Duration::from_secs(args.tls.tls_validity_seconds),
            webhook_config: args.webhook.webhook_config,
        },
        _ => {
            anyhow::bail!("give the serving certificate: --tls-secret, or --tls-cert and --tls-key")
        }
    };

    let client = kube::Client::try_default().await?;
    let certs = Arc::new(tls::CertStore::default());
    tls::start(client.clone(), source, certs.clone()).await?;
    let registry = Arc::new(registry::Registry::default());
    let health = Arc::new(admin::Health::default());
    let metrics = Arc::new(metrics::Metrics::default());
    let service = channel::ChannelService::new(
        client.clone(),
        registry.clone(),
        health.clone(),
        metrics.clone(),
    );
    let listener = tokio::net::TcpListener::bind(args.channel_addr)
        .await
        .with_context(|| format!("listening on {}", args.channel_addr))?;
    let channel = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(tls::incoming(listener, certs.server_config(&[b"h2"])));
    let hook = inject_config.map(|config| webhook::Webhook {
        config,
        certs: certs.clone(),
        metrics: metrics.clone(),
    });
    let injection = async move {
        match hook {
            Some(hook) => webhook::serve(args.webhook.webhook_addr, hook).await,
            None => std::future::pending().await,
        }
    };
    tracing::info!(channel_addr = %args.channel_addr, admin_addr = %args.admin_addr, "sidecar channel and admin listening");
    tokio::select! {
        served = channel => served.context("sidecar channel server"),
        served = injection => served.context("injection webhook"),
        served = admin::serve(args.admin_addr, health.clone(), metrics.clone()) => served.context("admin server"),
        lost = leader::run(client.clone(), election.clone(), health.clone()) => lost,
        ran = controller::run(client.clone(), registry, args.namespace.as_deref(), health.clone(), metrics) => ran,
        () = terminated() => {
            health.set_leading(false);
            tracing::info!("terminating: giving up the leader lease");
            leader::release(client, &election).await
        }
    }
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
