//! `hotload-e2e`: the local cluster's command line.

use anyhow::Result;
use clap::{Parser, Subcommand};
use hotload_e2e::{cluster, layout::Layout, node, runtime, testserver};

/// The operator's allocator, so that `bench health-server` measures the channel server as
/// the operator runs it ([`hotload_operator::allocator`]).
#[global_allocator]
static ALLOCATOR: hotload_operator::allocator::Allocator = hotload_operator::allocator::ALLOCATOR;

/// A real Kubernetes cluster on this machine, for Hotload's e2e tests and demo.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Bring the cluster up, tear it down, or show it.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Bring the cluster up, install the chart and roll plugins out to a demo app, with a
    /// summary at the end (`make demo`).
    Demo,
    /// Seeded random releases and faults on a demo fleet, with invariants checked after
    /// each run (docs/reliability.md, "Chaos"); exits 1 if any run breaks one.
    Chaos(hotload_e2e::chaos::ChaosArgs),
    /// Benchmarks (docs/benchmarks.md).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the node agent (started by `cluster up`).
    NodeAgent(node::AgentArgs),
    /// Run the e2e test server (the image `hotload/e2e-testserver:dev`).
    Testserver(testserver::TestServerArgs),
    /// Internal: hold a pod's namespaces.
    #[command(hide = true)]
    Sandbox(runtime::SandboxArgs),
    /// Internal: enter a pod and exec a container's program.
    #[command(hide = true)]
    ContainerInit(runtime::ContainerInitArgs),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// The operator at fleet scale: N pods with simulated sidecars, three rollouts.
    Rollout {
        /// Pods in the fleet.
        #[arg(long, default_value_t = 100)]
        pods: usize,
        /// Channel streams sharing one TLS connection. 1 is what a fleet does (every
        /// sidecar dials its own); more measures the per-stream cost alone.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        streams_per_connection: u32,
        /// Simulated sidecars send no health reports (by default each sends one a second).
        #[arg(long)]
        silent: bool,
        /// Seconds to wait once every stream is open, before the first rollout: the
        /// operator's memory keeps rising for a minute or two of health reports.
        #[arg(long, default_value_t = 0)]
        settle: u64,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Hotload against a rolling restart on the same N real pods (real sidecars, operator,
    /// processes): v1 → v2 both ways, maxUnavailable 25% then 100%, under traffic.
    VersusRestart {
        /// Demo pods in each fleet.
        #[arg(long, default_value_t = 10)]
        pods: usize,
        /// Run this demo-app binary in both fleets' app containers instead of the image's
        /// (e.g. a release build; the sidecar and operator stay the cluster's).
        #[arg(long)]
        app_binary: Option<std::path::PathBuf>,
        /// Print one JSON object (otherwise pretty-printed JSON).
        #[arg(long)]
        json: bool,
    },
    /// What health reports (one a second per pod) cost the operator's channel server: CPU
    /// and memory with N simulated sidecars silent, then reporting. Runs no cluster.
    Health {
        /// Simulated sidecars.
        #[arg(long, default_value_t = 1000)]
        pods: usize,
        /// Seconds each phase is measured.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Channel streams sharing one TLS connection (1: a connection per sidecar).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        streams_per_connection: u32,
        /// Print one JSON object (otherwise pretty-printed JSON).
        #[arg(long)]
        json: bool,
    },
    /// Internal: the process `bench health` measures.
    #[command(hide = true)]
    HealthServer {
        /// Connections the channel server accepts.
        #[arg(long)]
        max_connections: usize,
    },
    /// The data plane with real processes: swaps under load, sidecar footprint, load time.
    Swap {
        /// Seconds of load per phase.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Print one JSON object (the only format).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Start the cluster (or find it running); prints `export KUBECONFIG=…`.
    Up(cluster::UpOptions),
    /// Stop every process and remove the network, cgroups and state.
    Down {
        /// Fail if anything of the cluster is left afterwards.
        #[arg(long)]
        verify: bool,
    },
    /// Show the components and Nodes.
    Status,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // These two run before any thread exists: they enter namespaces and exec.
    match &cli.command {
        Command::Sandbox(args) => return runtime::sandbox(args),
        Command::ContainerInit(args) => return runtime::container_init(args),
        _ => {}
    }
    init_tracing(cli.log_json);
    hotload_e2e::tls::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let layout = Layout::from_env();
        match cli.command {
            Command::Cluster(ClusterCommand::Up(options)) => {
                let kubeconfig = cluster::up(&layout, &options).await?;
                println!("export KUBECONFIG={}", kubeconfig.display());
                println!(
                    "export PATH={}:$PATH",
                    layout.cache().join("bin/current").display()
                );
            }
            Command::Cluster(ClusterCommand::Down { verify }) => {
                cluster::down(&layout)?;
                if verify {
                    let left = cluster::leftovers()?;
                    anyhow::ensure!(
                        left.is_empty(),
                        "left behind after cluster down:\n{}",
                        left.join("\n")
                    );
                    eprintln!(
                        "cluster down: no process, network namespace, link, cgroup or mount left"
                    );
                }
            }
            Command::Cluster(ClusterCommand::Status) => {
                print!("{}", cluster::status(&layout).await?)
            }
            Command::Demo => {
                cluster::up(&layout, &cluster::UpOptions::default()).await?;
                let me = std::env::current_exe()?;
                hotload_e2e::demo::run(&layout, &me.to_string_lossy()).await?;
            }
            Command::Chaos(args) => {
                let me = std::env::current_exe()?;
                let summary =
                    hotload_e2e::chaos::main(&layout, &me.to_string_lossy(), &args).await?;
                if !summary.passed() {
                    std::process::exit(1);
                }
            }
            Command::Bench(BenchCommand::Rollout {
                pods,
                streams_per_connection,
                silent,
                settle,
                json,
            }) => {
                let report = hotload_e2e::bench::rollout(
                    &layout,
                    pods,
                    streams_per_connection as usize,
                    silent,
                    std::time::Duration::from_secs(settle),
                )
                .await?;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                }
            }
            Command::Bench(BenchCommand::VersusRestart {
                pods,
                app_binary,
                json,
            }) => {
                let report = hotload_e2e::bench::versus::run(&layout, pods, app_binary).await?;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                }
            }
            Command::Bench(BenchCommand::Health {
                pods,
                seconds,
                streams_per_connection,
                json,
            }) => {
                let report =
                    hotload_e2e::bench::health::run(pods, seconds, streams_per_connection as usize)
                        .await?;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                }
            }
            Command::Bench(BenchCommand::HealthServer { max_connections }) => {
                hotload_e2e::bench::health::serve(max_connections).await?
            }
            Command::Bench(BenchCommand::Swap { seconds, json: _ }) => {
                println!("{}", hotload_e2e::bench::swap::run(seconds)?);
            }
            Command::NodeAgent(args) => node::run(args).await?,
            Command::Testserver(args) => testserver::run(args).await?,
            Command::Sandbox(_) | Command::ContainerInit(_) => unreachable!("handled above"),
        }
        Ok(())
    })
}

fn init_tracing(json: bool) {
    use tracing_subscriber::{EnvFilter, fmt};
    // kube's client builder logs every refused connection at ERROR; while `cluster up` polls a
    // starting apiserver those are expected, and a real failure surfaces as our own error.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube_client::client::builder=off"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
