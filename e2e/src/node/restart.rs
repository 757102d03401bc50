//! When a stopped container runs again, and after how long: the kubelet's rules.

use std::time::Duration;

/// Which list a container comes from, which decides how it restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerKind {
    /// An init container that must run to completion before the app starts.
    Init,
    /// A native sidecar: an init container with `restartPolicy: Always`.
    Sidecar,
    /// An app container.
    App,
}

/// The kubelet's maximum back-off between restarts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Whether a container that exited with `exit_code` runs again under `pod_policy`.
pub fn should_restart(kind: ContainerKind, pod_policy: &str, exit_code: i32) -> bool {
    match kind {
        ContainerKind::Sidecar => true,
        // Init containers must succeed; only `Never` gives up on them.
        ContainerKind::Init => exit_code != 0 && pod_policy != "Never",
        ContainerKind::App => match pod_policy {
            "Never" => false,
            "OnFailure" => exit_code != 0,
            _ => true,
        },
    }
}

/// The delay before the next restart, the kubelet's way: the first restart is immediate,
/// then `base`, doubling up to [`MAX_BACKOFF`]; a run that lasted twice the maximum resets
/// the sequence. `previous` is the last delay (`None` before the first failure).
pub fn next_backoff(previous: Option<Duration>, ran_for: Duration, base: Duration) -> Duration {
    match previous {
        None => Duration::ZERO,
        Some(_) if ran_for >= 2 * MAX_BACKOFF => Duration::ZERO,
        Some(previous) if previous.is_zero() => base,
        Some(previous) => (previous * 2).min(MAX_BACKOFF),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policy_matrix() {
        use ContainerKind::*;
        assert!(should_restart(App, "Always", 0));
        assert!(should_restart(App, "Always", 1));
        assert!(!should_restart(App, "OnFailure", 0));
        assert!(should_restart(App, "OnFailure", 2));
        assert!(!should_restart(App, "Never", 2));
        assert!(!should_restart(Init, "Always", 0));
        assert!(should_restart(Init, "Always", 1));
        assert!(!should_restart(Init, "Never", 1));
        assert!(should_restart(Sidecar, "Never", 0));
    }

    #[test]
    fn backoff_starts_immediate_then_doubles_caps_and_resets() {
        let base = Duration::from_secs(10);
        let short = Duration::from_secs(1);
        let first = next_backoff(None, short, base);
        assert_eq!(first, Duration::ZERO);
        let second = next_backoff(Some(first), short, base);
        assert_eq!(second, base);
        assert_eq!(
            next_backoff(Some(second), short, base),
            Duration::from_secs(20)
        );
        assert_eq!(
            next_backoff(Some(Duration::from_secs(200)), short, base),
            MAX_BACKOFF
        );
        assert_eq!(
            next_backoff(Some(MAX_BACKOFF), Duration::from_secs(600), base),
            Duration::ZERO
        );
    }
}
