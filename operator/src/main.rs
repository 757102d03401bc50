//! `hotload-operator`: parse arguments, run.

use anyhow::Result;
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
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print!("{}", hotload_operator::api::crd_yaml()?),
        Command::Run { namespace } => {
            init_tracing(cli.log_json);
            // Workspace builds can enable both rustls providers; pick one explicitly.
            let _ = rustls::crypto::ring::default_provider().install_default();
            tokio::runtime::Runtime::new()?.block_on(async {
                let client = kube::Client::try_default().await?;
                let registry = std::sync::Arc::default();
                hotload_operator::controller::run(client, registry, namespace.as_deref()).await
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
