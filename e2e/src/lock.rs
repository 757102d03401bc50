//! A whole-file lock so two `cluster up`/`cluster down` runs (two test binaries, say) never
//! build or tear down the cluster at the same time.

use std::fs::OpenOptions;
use std::path::Path;

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};

/// Holds the lock until dropped.
pub type Guard = Flock<std::fs::File>;

/// Blocks until this process holds the lock at `path`.
pub fn exclusive(path: &Path) -> Result<Guard> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening lock {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .with_context(|| format!("locking {}", path.display()))
}
