//! `hotload-operator`: parse arguments, run.

use anyhow::Result;
use clap::{Parser, Subcommand};

/// The Hotload operator.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the PluginRelease CRD (YAML), as committed in crds/.
    Crd,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", hotload_operator::api::crd_yaml()?),
    }
    Ok(())
}
