//! `kubectl hotload`: watch and steer PluginRelease rollouts. A kubectl plugin (kubectl
//! runs `kubectl-hotload` from PATH); it talks only to the API server, with the current
//! kubeconfig context.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use hotload_operator::api::{Phase, PluginRelease};
use hotload_operator::kubectl::{self, Request};
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

/// Watch and steer PluginRelease rollouts.
#[derive(Parser, Debug)]
#[command(name = "kubectl hotload", version)]
struct Cli {
    /// The release's namespace (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Phase, progress bars, the first failure and every pod's acknowledgement.
    Status {
        /// The PluginRelease.
        name: String,
        /// Redraw on every change until the rollout ends (exit 1 if it failed).
        #[arg(short, long)]
        watch: bool,
        /// Give up watching after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Each pod's revision and state.
    Pods {
        /// The PluginRelease.
        name: String,
    },
    /// Past revisions and how their rollouts ended.
    History {
        /// The PluginRelease.
        name: String,
    },
    /// Stop giving the new revision to more pods (sets spec.paused).
    Pause {
        /// The PluginRelease.
        name: String,
    },
    /// Continue a paused rollout or a canary pause step.
    Resume {
        /// The PluginRelease.
        name: String,
    },
    /// Roll out a failed or rolled-back revision again.
    Retry {
        /// The PluginRelease.
        name: String,
    },
    /// Stop the rollout and send every touched pod back to the stable revision.
    #[command(alias = "rollback")]
    Abort {
        /// The PluginRelease.
        name: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let client = Client::try_default()
        .await
        .context("connecting to the cluster (KUBECONFIG or in-cluster config)")?;
    let namespace = cli
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_string());
    let api: Api<PluginRelease> = Api::namespaced(client, &namespace);
    let get = |name: &str| {
        let api = api.clone();
        let name = name.to_string();
        let namespace = namespace.clone();
        async move {
            api.get_opt(&name)
                .await?
                .with_context(|| format!("PluginRelease {namespace}/{name} not found"))
        }
    };
    let mut out = std::io::stdout();
    match cli.command {
        Command::Status {
            name, watch: false, ..
        } => {
            out.write_all(
                kubectl::status_view(&get(&name).await?, jiff::Timestamp::now()).as_bytes(),
            )?;
        }
        Command::Status {
            name,
            watch: true,
            timeout,
        } => {
            get(&name).await?;
            let outcome =
                tokio::time::timeout(Duration::from_secs(timeout), follow(&api, &name)).await;
            let release =
                outcome.with_context(|| format!("still not settled after {timeout}s"))??;
            let phase = release.status.as_ref().and_then(|s| s.phase);
            if matches!(phase, Some(Phase::RolledBack | Phase::Degraded)) {
                std::process::exit(1);
            }
        }
        Command::Pods { name } => {
            out.write_all(
                kubectl::pods_view(&get(&name).await?, jiff::Timestamp::now()).as_bytes(),
            )?;
        }
        Command::History { name } => {
            out.write_all(kubectl::history_view(&get(&name).await?).as_bytes())?;
        }
        Command::Pause { name } => request(&api, &get(&name).await?, Request::Pause).await?,
        Command::Resume { name } => request(&api, &get(&name).await?, Request::Resume).await?,
        Command::Retry { name } => request(&api, &get(&name).await?, Request::Retry).await?,
        Command::Abort { name } => request(&api, &get(&name).await?, Request::Abort).await?,
    }
    Ok(())
}

/// Redraws the status on every change until it settles; returns the last state.
async fn follow(api: &Api<PluginRelease>, name: &str) -> Result<PluginRelease> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut changes = std::pin::pin!(watcher(api.clone(), config).applied_objects());
    let terminal = std::io::stdout().is_terminal();
    while let Some(release) = changes.next().await {
        let release = release?;
        let view = kubectl::status_view(&release, jiff::Timestamp::now());
        if terminal {
            print!("\x1b[H\x1b[2J{view}");
        } else {
            println!("{view}---");
        }
        std::io::stdout().flush()?;
        if kubectl::settled(&release) {
            return Ok(release);
        }
    }
    anyhow::bail!("the watch on PluginRelease {name} ended")
}

async fn request(
    api: &Api<PluginRelease>,
    release: &PluginRelease,
    request: Request,
) -> Result<()> {
    let name = hotload_operator::api::describe(release);
    let token = jiff::Timestamp::now().to_string();
    let patch = request.patch(release, &token).map_err(anyhow::Error::msg)?;
    let object = release.metadata.name.clone().unwrap_or_default();
    api.patch(&object, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("patching PluginRelease {name}"))?;
    println!("pluginrelease {name}: {request:?} requested");
    Ok(())
}
