//! `hotload-demo-app`: parse arguments, then serve (one process) or supervise pre-fork
//! workers (`--workers N`).

use clap::Parser;
use hotload_demo_app::cli::Args;
use hotload_demo_app::{prefork, serve};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if args.supervises() {
        return prefork::supervise(args);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve::run(args))
}
