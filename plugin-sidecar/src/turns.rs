//! Whose turn it is to be carried out, per plugin: the operator channel's assignments run
//! one per plugin at a time (different plugins side by side), only the newest word on a
//! plugin waits, a newer one supersedes one the app was not told of yet, and a transient
//! failure is tried again after a capped back-off. Pure: the channel's worker performs what
//! these decisions say.

use std::collections::BTreeMap;
use std::time::Duration;

use hotload_channel::proto;

use crate::assignment::Supersedable;
use crate::channel::Attempt;
use crate::fetch::RetryPolicy;

/// How a transient failure is tried again: 1 s doubling to 10 s, each wait jittered to
/// between half and all of that, so a fleet whose registry comes back does not return in
/// lock-step and every pod has tried again within 10 s.
pub(crate) const RETRY: RetryPolicy = RetryPolicy {
    attempts: u32::MAX,
    base: Duration::from_secs(1),
    cap: Duration::from_secs(10),
};

/// Why an assignment did not take, and whether trying it again may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) reason: String,
    pub(crate) transient: bool,
}

impl Failure {
    pub(crate) fn permanent(reason: String) -> Self {
        Failure {
            reason,
            transient: false,
        }
    }
}

/// An assignment under way, how often it failed before, the newest one waiting behind, and
/// whether the app was told of it yet.
struct Running {
    assign: proto::Assign,
    failures: u32,
    next: Option<proto::Assign>,
    stage: Supersedable,
}

/// An assignment that failed for a transient reason, waiting to be tried again.
struct Retry {
    assign: proto::Assign,
    failures: u32,
    at: tokio::time::Instant,
}

/// Whose turn it is: the plugins with an assignment under way, for each the newest
/// assignment waiting behind it, and the assignments waiting to be tried again. Only the
/// operator's newest word on a plugin counts: a rollback that arrives while a rollout's
/// assignment waits (or waits to be retried) replaces it, and a reconnect's re-sends do
/// not pile up.
#[derive(Default)]
pub(crate) struct Turns {
    busy: BTreeMap<String, Running>,
    retry: BTreeMap<String, Retry>,
}

impl Turns {
    /// Takes `assign`; returns it if its plugin is free (start it now), else keeps it as
    /// that plugin's next. It replaces a retry of the plugin; the same revision again (a
    /// reconnect's re-send) keeps the retry's schedule.
    ///
    /// An assignment under way that the app was not told of yet (still fetching or
    /// verifying) is called off by a different one, which starts at once: a rollback never
    /// waits behind the download of the revision it rolls back. The same one again leaves
    /// it running.
    pub(crate) fn offer(&mut self, assign: proto::Assign) -> Option<proto::Assign> {
        if let Some(running) = self.busy.get_mut(&assign.plugin) {
            if running.assign == assign && !running.stage.published() {
                return None;
            }
            if running.stage.call_off() {
                return Some(self.run(assign, 0));
            }
            running.next = Some(assign);
            return None;
        }
        if let Some(retry) = self.retry.get_mut(&assign.plugin) {
            if retry.assign.revision == assign.revision {
                retry.assign = assign;
                return None;
            }
            self.retry.remove(&assign.plugin);
        }
        Some(self.run(assign, 0))
    }

    /// The stage of `plugin`'s assignment under way, for the task that carries it out.
    pub(crate) fn stage(&self, plugin: &str) -> Supersedable {
        self.busy
            .get(plugin)
            .map(|r| r.stage.clone())
            .unwrap_or_default()
    }

    fn run(&mut self, assign: proto::Assign, failures: u32) -> proto::Assign {
        let running = Running {
            assign: assign.clone(),
            failures,
            next: None,
            stage: Supersedable::default(),
        };
        self.busy.insert(assign.plugin.clone(), running);
        assign
    }

    /// `plugin`'s assignment ended with `outcome` at `now`. Returns what to report of it,
    /// and its next assignment, if any (start it now). A failure the caller wants `retry`d,
    /// with nothing newer waiting, is tried again after [`RETRY`]'s back-off, scaled by
    /// `jitter`.
    pub(crate) fn finished(
        &mut self,
        plugin: &str,
        outcome: Result<(), Failure>,
        retry: bool,
        now: tokio::time::Instant,
        jitter: f64,
    ) -> (Option<Attempt>, Option<proto::Assign>) {
        let Some(running) = self.busy.remove(plugin) else {
            return (None, None);
        };
        let revision = running.assign.revision.clone();
        let attempt = match outcome {
            Ok(()) => None,
            Err(f) if retry && running.next.is_none() => {
                let failures = running.failures + 1;
                let wait = RETRY.backoff(failures, jitter);
                let reason = format!(
                    "{} (try {failures} failed; trying again in {:.1}s)",
                    f.reason,
                    wait.as_secs_f64()
                );
                let retry = Retry {
                    assign: running.assign,
                    failures,
                    at: now + wait,
                };
                self.retry.insert(plugin.to_string(), retry);
                Some(Attempt::Retrying { revision, reason })
            }
            Err(f) => Some(Attempt::Failed {
                revision,
                reason: f.reason,
            }),
        };
        let next = running.next.map(|next| self.run(next, 0));
        (attempt, next)
    }

    /// When the earliest retry is due.
    pub(crate) fn next_retry(&self) -> Option<tokio::time::Instant> {
        self.retry.values().map(|r| r.at).min()
    }

    /// The retries due at `now`, taken out and marked under way (start them now).
    pub(crate) fn due(&mut self, now: tokio::time::Instant) -> Vec<proto::Assign> {
        let due: Vec<String> = self
            .retry
            .iter()
            .filter(|(_, r)| r.at <= now)
            .map(|(plugin, _)| plugin.clone())
            .collect();
        let mut started = Vec::new();
        for plugin in due {
            if let Some(r) = self.retry.remove(&plugin) {
                started.push(self.run(r.assign, r.failures));
            }
        }
        started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(transient: bool) -> Result<(), Failure> {
        Err(Failure {
            reason: "fetch: connection refused".into(),
            transient,
        })
    }

    #[test]
    fn one_assignment_per_plugin_at_a_time_and_only_the_newest_waits() {
        let assign = |plugin: &str, revision: &str| proto::Assign {
            plugin: plugin.into(),
            revision: revision.into(),
            ..Default::default()
        };
        let revision = |a: Option<proto::Assign>| a.map(|a| a.revision);
        let mut turns = Turns::default();
        let now = tokio::time::Instant::now();
        let finished =
            |turns: &mut Turns, plugin: &str| turns.finished(plugin, Ok(()), false, now, 1.0).1;
        assert_eq!(
            revision(turns.offer(assign("auth", "r2"))),
            Some("r2".into())
        );
        assert_eq!(
            revision(turns.offer(assign("geo", "g1"))),
            Some("g1".into()),
            "another plugin starts at once"
        );
        assert!(turns.stage("auth").publish(), "the app is told of r2");
        assert_eq!(
            revision(turns.offer(assign("auth", "r3"))),
            None,
            "auth is busy"
        );
        assert_eq!(revision(turns.offer(assign("auth", "r1"))), None);
        assert_eq!(
            revision(finished(&mut turns, "auth")),
            Some("r1".into()),
            "only the newest waited"
        );
        assert_eq!(revision(finished(&mut turns, "auth")), None);
        assert_eq!(revision(finished(&mut turns, "geo")), None);
        assert_eq!(
            revision(turns.offer(assign("auth", "r4"))),
            Some("r4".into()),
            "free again"
        );
    }

    #[test]
    fn a_newer_assignment_supersedes_one_the_app_was_not_told_of() {
        let assign = |revision: &str| proto::Assign {
            plugin: "auth".into(),
            revision: revision.into(),
            ..Default::default()
        };
        let revision = |a: Option<proto::Assign>| a.map(|a| a.revision);
        let mut turns = Turns::default();
        turns.offer(assign("r2"));
        let r2 = turns.stage("auth");
        assert_eq!(
            revision(turns.offer(assign("r2"))),
            None,
            "the same assignment again leaves it running"
        );
        assert_eq!(
            revision(turns.offer(assign("r1"))),
            Some("r1".into()),
            "a rollback starts at once"
        );
        assert!(!r2.publish(), "r2 was called off: it must not publish");
        assert!(turns.stage("auth").publish(), "r1 is told to the app");
        assert_eq!(
            revision(turns.offer(assign("r3"))),
            None,
            "once told, it runs to its end"
        );
        let now = tokio::time::Instant::now();
        let (attempt, next) = turns.finished("auth", Ok(()), false, now, 1.0);
        assert_eq!((attempt, revision(next)), (None, Some("r3".into())));
        assert!(
            turns.offer(assign("")).is_some(),
            "an unload supersedes too"
        );
    }

    #[test]
    fn a_transient_failure_is_tried_again_with_capped_back_off_and_a_permanent_one_is_not() {
        let assign = |revision: &str| proto::Assign {
            plugin: "auth".into(),
            revision: revision.into(),
            ..Default::default()
        };
        let t0 = tokio::time::Instant::now();
        let mut turns = Turns::default();
        turns.offer(assign("r1"));
        let (attempt, next) = turns.finished("auth", failure(true), true, t0, 1.0);
        assert!(next.is_none());
        assert!(
            matches!(&attempt, Some(Attempt::Retrying { revision, reason })
                if revision == "r1" && reason.contains("connection refused") && reason.contains("try 1")),
            "{attempt:?}"
        );
        assert_eq!(turns.next_retry(), Some(t0 + Duration::from_secs(1)));
        assert!(turns.due(t0).is_empty(), "not before its time");
        assert!(
            turns.offer(assign("r1")).is_none(),
            "a re-send of the same revision keeps the retry's schedule"
        );
        assert_eq!(turns.next_retry(), Some(t0 + Duration::from_secs(1)));
        let again = turns.due(t0 + Duration::from_secs(1));
        assert_eq!(again.len(), 1);
        let mut at = t0 + Duration::from_secs(1);
        for _ in 0..6 {
            turns.finished("auth", failure(true), true, at, 1.0);
            at = turns.next_retry().expect("retried");
            turns.due(at);
        }
        let (_, _) = turns.finished("auth", failure(true), true, at, 1.0);
        assert_eq!(
            turns.next_retry(),
            Some(at + Duration::from_secs(10)),
            "the back-off is capped at 10 s"
        );
        assert_eq!(
            turns.offer(assign("r0")).map(|a| a.revision),
            Some("r0".into()),
            "a newer word replaces the retry"
        );
        assert_eq!(turns.next_retry(), None);
        let (attempt, _) = turns.finished("auth", failure(false), false, at, 1.0);
        assert!(matches!(attempt, Some(Attempt::Failed { .. })));
        assert_eq!(
            turns.next_retry(),
            None,
            "a cause not to retry is reported as failed"
        );
    }

    #[test]
    fn a_failure_with_a_newer_assignment_waiting_is_not_retried() {
        let assign = |revision: &str| proto::Assign {
            plugin: "auth".into(),
            revision: revision.into(),
            ..Default::default()
        };
        let mut turns = Turns::default();
        turns.offer(assign("r2"));
        turns.stage("auth").publish();
        turns.offer(assign("r1"));
        let now = tokio::time::Instant::now();
        let (attempt, next) = turns.finished("auth", failure(true), true, now, 1.0);
        assert!(matches!(attempt, Some(Attempt::Failed { .. })));
        assert_eq!(next.map(|a| a.revision), Some("r1".into()));
        assert_eq!(turns.next_retry(), None);
    }
}
