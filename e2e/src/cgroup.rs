//! Every process of the local cluster lives in one cgroup-v2 subtree, `hotload-e2e/`:
//! control-plane components in `hotload-e2e/<component>`, pod containers in
//! `hotload-e2e/pods/<pod-uid>`. `cluster down` kills the whole subtree at once with
//! `cgroup.kill`, so no process outlives the cluster whatever state it was left in, and
//! `cpu.stat` gives each component's CPU time to the benchmarks.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The subtree's name under the cgroup-v2 mount.
pub const ROOT: &str = "hotload-e2e";

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` on unified hosts, `…/unified` on hybrid ones).
pub fn mount_point() -> Result<PathBuf> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(target))
        })
        .next()
        .context(
            "no cgroup2 filesystem is mounted; the cluster needs cgroup v2 to track its processes",
        )
}

/// The cgroup `hotload-e2e/<relative>`, created if missing.
pub fn ensure(relative: &str) -> Result<PathBuf> {
    let dir = mount_point()?.join(ROOT).join(relative);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
    Ok(dir)
}

/// Moves process `pid` (0: the caller) into cgroup `dir`.
pub fn join(dir: &Path, pid: u32) -> Result<()> {
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
        .with_context(|| format!("moving pid {pid} into cgroup {}", dir.display()))
}

/// Whether any process is left in `dir` or below it.
pub fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|events| events.lines().any(|line| line == "populated 1"))
        .unwrap_or(false)
}

/// Microseconds of CPU the processes in `dir` (and below) have used.
pub fn cpu_usage_usec(dir: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    stat.lines()
        .find_map(|line| line.strip_prefix("usage_usec "))
        .and_then(|value| value.trim().parse().ok())
}

/// Kills every process in the subtree, waits until it is empty, and removes it.
pub fn kill_all(timeout: Duration) -> Result<()> {
    let root = mount_point()?.join(ROOT);
    if !root.exists() {
        return Ok(());
    }
    std::fs::write(root.join("cgroup.kill"), "1")
        .with_context(|| format!("killing cgroup {}", root.display()))?;
    let deadline = Instant::now() + timeout;
    while populated(&root) {
        if Instant::now() > deadline {
            bail!(
                "processes are still alive in {} after SIGKILL",
                root.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    remove_tree(&root)
}

fn remove_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing cgroup {}", dir.display()))
}
