//! Crash loops, decided: a pod whose app or sidecar container keeps restarting after it was
//! assigned a revision, while its sidecar still reports that revision Pending or Loading,
//! has failed to load it. Its sidecar cannot say so (it restarts, or its app never answers),
//! so the operator reads it from the pod's restart counts, measured from a [`Baseline`]
//! taken when the revision was assigned. Pure.

use crate::api::AckState;
use crate::pods::ContainerRestarts;

/// Restarts of one container since the assignment that make it a crash loop: one restart
/// may be a node hiccup or an OOM under a load spike; two are a pattern.
pub const CRASH_RESTARTS: i32 = 2;

/// The pod's restart counts when a revision of a plugin was assigned to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Baseline {
    /// The revision assigned (`None`: an unload).
    pub revision: Option<String>,
    /// Each container's restart count then, by name.
    pub restarts: Vec<(String, i32)>,
}

/// Why the pod failed to load `assigned`, if it crash-loops while loading it: its report
/// still says Pending or Loading for the revision `baseline` was taken for, and a container
/// restarted [`CRASH_RESTARTS`] or more times since. A container without a count in the
/// baseline had not started then (no restarts). Names the container that restarted most.
pub fn crash_loop(
    state: AckState,
    assigned: Option<&str>,
    baseline: Option<&Baseline>,
    containers: &[ContainerRestarts],
) -> Option<String> {
    if !matches!(state, AckState::Pending | AckState::Loading) {
        return None;
    }
    let revision = assigned?;
    let baseline = baseline.filter(|b| b.revision.as_deref() == Some(revision))?;
    let before = |name: &str| {
        baseline
            .restarts
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, count)| *count)
    };
    let (container, restarted) = containers
        .iter()
        .map(|c| (c, c.restarts.saturating_sub(before(&c.name))))
        .filter(|(_, restarted)| *restarted >= CRASH_RESTARTS)
        .max_by_key(|(c, restarted)| (*restarted, std::cmp::Reverse(c.name.as_str())))?;
    let last = container.last.as_ref().map(|t| match &t.reason {
        Some(reason) => format!(" (last state: {reason}, exit code {})", t.exit_code),
        None => format!(" (last state: exit code {})", t.exit_code),
    });
    Some(format!(
        "container {} restarted {restarted} times while loading revision {revision}{}",
        container.name,
        last.unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::Termination;

    fn baseline(revision: &str, restarts: &[(&str, i32)]) -> Baseline {
        Baseline {
            revision: Some(revision.into()),
            restarts: restarts.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
        }
    }

    fn container(name: &str, restarts: i32) -> ContainerRestarts {
        ContainerRestarts {
            name: name.into(),
            restarts,
            last: Some(Termination {
                reason: Some("Error".into()),
                exit_code: 1,
            }),
        }
    }

    #[test]
    fn two_restarts_while_loading_are_a_failed_load_with_the_cause() {
        let base = baseline("c0f34a4280", &[("hotload-sidecar", 0), ("app", 1)]);
        let now = [container("hotload-sidecar", 0), container("app", 4)];
        assert_eq!(
            crash_loop(AckState::Loading, Some("c0f34a4280"), Some(&base), &now).as_deref(),
            Some(
                "container app restarted 3 times while loading revision c0f34a4280 \
                 (last state: Error, exit code 1)"
            )
        );
        assert!(crash_loop(AckState::Pending, Some("c0f34a4280"), Some(&base), &now).is_some());
    }

    #[test]
    fn one_restart_is_not_a_loop() {
        let base = baseline("r1", &[("app", 5)]);
        assert_eq!(
            crash_loop(
                AckState::Pending,
                Some("r1"),
                Some(&base),
                &[container("app", 6)]
            ),
            None
        );
    }

    #[test]
    fn the_sidecar_restarting_counts_too() {
        let base = baseline("r1", &[("hotload-sidecar", 0), ("app", 0)]);
        let now = [
            ContainerRestarts {
                name: "hotload-sidecar".into(),
                restarts: 2,
                last: Some(Termination {
                    reason: Some("OOMKilled".into()),
                    exit_code: 137,
                }),
            },
            container("app", 0),
        ];
        assert_eq!(
            crash_loop(AckState::Loading, Some("r1"), Some(&base), &now).as_deref(),
            Some(
                "container hotload-sidecar restarted 2 times while loading revision r1 \
                 (last state: OOMKilled, exit code 137)"
            )
        );
    }

    #[test]
    fn a_container_that_had_not_started_counts_from_zero() {
        let base = baseline("r1", &[]);
        let now = [ContainerRestarts {
            name: "app".into(),
            restarts: 2,
            last: None,
        }];
        assert_eq!(
            crash_loop(AckState::Pending, Some("r1"), Some(&base), &now).as_deref(),
            Some("container app restarted 2 times while loading revision r1")
        );
    }

    #[test]
    fn only_a_pending_load_of_the_measured_revision_can_fail_this_way() {
        let base = baseline("r1", &[("app", 0)]);
        let looping = [container("app", 9)];
        // The sidecar's own verdict stands once it has one: a Loaded state means every
        // worker loaded, and a Failed one has its reason already.
        for state in [AckState::Loaded, AckState::Failed] {
            assert_eq!(
                crash_loop(state, Some("r1"), Some(&base), &looping),
                None,
                "{state:?}"
            );
        }
        // Restarts counted from another revision's assignment, or from none, say nothing
        // about this one.
        assert_eq!(
            crash_loop(AckState::Pending, Some("r2"), Some(&base), &looping),
            None
        );
        assert_eq!(
            crash_loop(AckState::Pending, Some("r1"), None, &looping),
            None
        );
        assert_eq!(
            crash_loop(AckState::Pending, None, Some(&base), &looping),
            None
        );
    }
}
