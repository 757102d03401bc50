//! `bench swap`: the data plane's benchmark (`hotload-bench`, examples/demo-app/src/bench.rs)
//! with real processes: the demo app serving HTTP while plugins are swapped under load, the
//! sidecar agent, and the precompiled load time. This runs the release build next to this
//! binary with the sidecar as it ships (the `sidecar` profile).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, ensure};

/// Runs `hotload-bench --json` and returns its JSON line.
pub fn run(seconds: u64) -> Result<String> {
    let exe = std::env::current_exe()?;
    let bench = exe.with_file_name("hotload-bench");
    let target = exe
        .parent()
        .and_then(|d| d.parent())
        .map(PathBuf::from)
        .context("locating the target directory")?;
    let sidecar = target.join("sidecar/hotload-sidecar");
    for (binary, build) in [
        (&bench, "cargo build --release -p hotload-demo-app"),
        (&sidecar, "cargo build --profile sidecar -p hotload-sidecar"),
    ] {
        ensure!(
            binary.is_file(),
            "{} is missing; run `{build}`",
            binary.display()
        );
    }
    let out = Command::new(&bench)
        .args([
            "--json",
            "--seconds",
            &seconds.to_string(),
            "--clients",
            "2",
        ])
        .args(["--swap-interval-ms", "50", "--idle-seconds", "10"])
        .arg("--sidecar-bin")
        .arg(&sidecar)
        .output()
        .with_context(|| format!("running {}", bench.display()))?;
    ensure!(
        out.status.success(),
        "hotload-bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let line = text.lines().last().unwrap_or_default().to_string();
    serde_json::from_str::<serde_json::Value>(&line).context("hotload-bench printed no JSON")?;
    Ok(line)
}
