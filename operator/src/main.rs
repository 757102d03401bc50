//! `hotload-operator`: parse arguments, run.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

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
    Run {
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "HOTLOAD_WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// Where sidecars dial in (gRPC over TLS).
        #[arg(long, env = "HOTLOAD_CHANNEL_ADDR", default_value = "0.0.0.0:8443")]
        channel_addr: std::net::SocketAddr,
        /// The channel's TLS certificate (PEM); sidecars trust its CA.
        #[arg(long, env = "HOTLOAD_CHANNEL_TLS_CERT")]
        tls_cert: std::path::PathBuf,
        /// The channel's TLS key (PEM).
        #[arg(long, env = "HOTLOAD_CHANNEL_TLS_KEY")]
        tls_key: std::path::PathBuf,
        /// Where /live, /ready and /metrics are served.
        #[arg(long, env = "HOTLOAD_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
        admin_addr: std::net::SocketAddr,
        /// The namespace of the leader Lease (default: the watched namespace, else the
        /// operator pod's own namespace).
        #[arg(long, env = "POD_NAMESPACE")]
        lease_namespace: Option<String>,
        /// This replica's identity in the election.
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print!("{}", hotload_operator::api::crd_yaml()?),
        Command::Run {
            namespace,
            channel_addr,
            tls_cert,
            tls_key,
            admin_addr,
            lease_namespace,
            identity,
        } => {
            init_tracing(cli.log_json);
            // Workspace builds can enable both rustls providers; pick one explicitly.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let tls_identity = tonic::transport::Identity::from_pem(
                std::fs::read(&tls_cert)
                    .with_context(|| format!("reading {}", tls_cert.display()))?,
                std::fs::read(&tls_key)
                    .with_context(|| format!("reading {}", tls_key.display()))?,
            );
            let election = hotload_operator::leader::Election {
                namespace: namespace.clone().or(lease_namespace).context(
                    "set --namespace or --lease-namespace (POD_NAMESPACE) for the leader lease",
                )?,
                name: "hotload-operator".into(),
                identity: identity
                    .unwrap_or_else(|| format!("hotload-operator-{}", std::process::id())),
                duration: std::time::Duration::from_secs(15),
            };
            tokio::runtime::Runtime::new()?.block_on(async {
                use hotload_operator::{admin, channel, controller, leader, metrics, registry};
                use std::sync::Arc;
                let client = kube::Client::try_default().await?;
                let registry = Arc::new(registry::Registry::default());
                let health = Arc::new(admin::Health::default());
                let metrics = Arc::new(metrics::Metrics::default());
                let service = channel::ChannelService::new(client.clone(), registry.clone(), health.clone(), metrics.clone());
                let channel = tonic::transport::Server::builder()
                    .tls_config(tonic::transport::ServerTlsConfig::new().identity(tls_identity))?
                    .add_service(service)
                    .serve(channel_addr);
                tracing::info!(%channel_addr, %admin_addr, "sidecar channel and admin listening");
                tokio::select! {
                    served = channel => served.context("sidecar channel server"),
                    served = admin::serve(admin_addr, health.clone(), metrics.clone()) => served.context("admin server"),
                    lost = leader::run(client.clone(), election, health.clone()) => lost,
                    ran = controller::run(client, registry, namespace.as_deref(), health, metrics) => ran,
                }
            })?;
        }
    }
    Ok(())
}

fn init_tracing(json: bool) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
