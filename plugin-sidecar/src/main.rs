//! `hotload-sidecar`: parse arguments, run.

use clap::Parser;
use hotload_sidecar::cli::{self, Cli, Command};

fn main() -> anyhow::Result<()> {
    let args = Cli::parse();
    cli::init_logging(args.json_logs);
    // One thread: the agent mostly waits on sockets; this keeps idle RSS small.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.command {
        Command::Run(run) => rt.block_on(cli::run(run)),
        Command::Load(load) => {
            let loaded = rt.block_on(cli::load(load))?;
            std::process::exit(if loaded { 0 } else { 1 });
        }
    }
}
