//! emptyDir volumes as size-limited tmpfs mounts, so a pod can fill its emptyDir (and see
//! `ENOSPC`) without filling the machine's disk.
//!
//! ```text
//! node-agent (host mount ns) ─exec─▶ unshare --mount --propagation private ─exec─▶ node-agent
//!   (same pid)                                                                    │
//!   tmpfs size=<sizeLimit or DEFAULT_SIZE_LIMIT> on <pod dir>/volumes/<name> ◀─────┘
//!   container-init (copies the agent's mount ns) bind-mounts it into each container
//! ```
//!
//! The mounts live in the agent's own mount namespace: the host never sees them, and they
//! vanish with the agent and its containers, so `cluster down` has nothing to unmount. A
//! pod's mounts are detached when its directory is removed. Without that namespace (the
//! `unshare` exec failed) emptyDirs stay plain directories, as before. Whoever needs to
//! reach a pod's emptyDir from outside goes through `/proc/<agent pid>/root`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::EmptyDirVolumeSource;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// The size of an emptyDir without `sizeLimit` (tmpfs takes memory only as it is written).
pub const DEFAULT_SIZE_LIMIT: u64 = 256 << 20;

/// Set in the environment of the agent once it runs in its own mount namespace.
const OWN_MOUNTS_ENV: &str = "HOTLOAD_NODE_AGENT_OWN_MOUNTS";

static PRIVATE: AtomicBool = AtomicBool::new(false);

/// Makes sure the agent runs in a mount namespace of its own (private propagation): if it
/// does not yet, execs `unshare --mount --propagation private` with the same command line
/// (the pid stays, so pid files and cgroups stay right). Returns only when it does, or when
/// the exec failed (then emptyDirs stay plain directories, and the error is logged).
pub fn enter_own_mount_namespace() {
    if std::env::var_os(OWN_MOUNTS_ENV).is_some() {
        PRIVATE.store(true, Ordering::SeqCst);
        return;
    }
    use std::os::unix::process::CommandExt as _;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            tracing::warn!(error = %e, "emptyDirs stay plain directories: no current exe");
            return;
        }
    };
    let error = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(OWN_MOUNTS_ENV, "1")
        .exec();
    tracing::warn!(error = %error, "emptyDirs stay plain directories: unshare --mount failed");
}

/// Whether emptyDirs are tmpfs mounts (the agent has its own mount namespace).
pub fn bounded() -> bool {
    PRIVATE.load(Ordering::SeqCst)
}

/// Bytes of a resource quantity (`64Mi`, `1G`, `500k`, `1e6`, `128974848`); fractions are
/// rounded up.
pub fn quantity_bytes(quantity: &str) -> Result<u64, String> {
    let q = quantity.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("quantity {quantity:?}: no number"))?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "m" => 1e-3,
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..]
                .parse()
                .map_err(|_| format!("quantity {quantity:?}: bad exponent"))?;
            10f64.powi(exp)
        }
        _ => return Err(format!("quantity {quantity:?}: unknown suffix {suffix:?}")),
    };
    let bytes = (value * factor).ceil();
    if !(0.0..=u64::MAX as f64).contains(&bytes) {
        return Err(format!("quantity {quantity:?}: out of range"));
    }
    Ok(bytes as u64)
}

/// The size of `source`'s tmpfs: its `sizeLimit`, or [`DEFAULT_SIZE_LIMIT`].
pub fn size_of(source: &EmptyDirVolumeSource) -> Result<u64, String> {
    match &source.size_limit {
        Some(limit) => quantity_bytes(&limit.0),
        None => Ok(DEFAULT_SIZE_LIMIT),
    }
}

/// Mounts a tmpfs of `source`'s size on `path` (a directory), unless emptyDirs are plain
/// directories or `path` is a mount point already (a retried volume set-up).
pub fn mount_tmpfs(path: &Path, source: &EmptyDirVolumeSource) -> Result<(), String> {
    if !bounded() || mount_points_below(path).iter().any(|p| p == path) {
        return Ok(());
    }
    let size = size_of(source)?;
    mount(
        Some("tmpfs"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("size={size},mode=0777").as_str()),
    )
    .map_err(|e| format!("mounting a {size}-byte tmpfs on {}: {e}", path.display()))
}

/// Detaches every mount at or below `dir`, deepest first (before the directory is removed).
pub fn unmount_below(dir: &Path) {
    let mut points = mount_points_below(dir);
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        if let Err(e) = umount2(&point, MntFlags::MNT_DETACH) {
            tracing::warn!(path = %point.display(), error = %e, "detaching an emptyDir");
        }
    }
}

/// The mount points of this process's mount namespace at or below `dir`.
fn mount_points_below(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        .filter(|point| point.starts_with(dir))
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;

    #[test]
    fn quantities_read_as_kubernetes_does() {
        assert_eq!(quantity_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(quantity_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(quantity_bytes("500k"), Ok(500_000));
        assert_eq!(quantity_bytes("1.5M"), Ok(1_500_000));
        assert_eq!(quantity_bytes("1e6"), Ok(1_000_000));
        assert_eq!(quantity_bytes("128974848"), Ok(128_974_848));
        assert_eq!(quantity_bytes("1500m"), Ok(2));
        assert!(quantity_bytes("lots").is_err());
        assert!(quantity_bytes("5Zi").is_err());
    }

    #[test]
    fn an_empty_dir_without_a_limit_gets_the_default_bound() {
        let mut source = EmptyDirVolumeSource::default();
        assert_eq!(size_of(&source), Ok(DEFAULT_SIZE_LIMIT));
        source.size_limit = Some(Quantity("16Mi".into()));
        assert_eq!(size_of(&source), Ok(16 << 20));
    }
}
