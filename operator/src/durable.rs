//! Decisions are durable before they act (DESIGN.md): what the reconciler sends to pods
//! follows from a status it has written, so a restart or a failover never sends a revision
//! the operator gave up, and a status write that fails moves no pod.
//!
//! ```text
//!  plan ─▶ publication(memory, cached status, planned status, clock)
//!           ├─ Send                ─▶ send                         (status is as planned)
//!           ├─ WriteThenSend       ─▶ write ─ok─▶ send, events     (a new decision)
//!           │                              └─err─▶ nothing sent; back-off
//!           ├─ SendThenWrite       ─▶ send ─▶ write, events        (progress only)
//!           ├─ SendThenWriteAfter  ─▶ send; write later            (progress, coalesced)
//!           └─ Wait                ─▶ nothing                      (a decision, in back-off)
//! ```
//!
//! A decision is a change of what the status says pods are to run: the phase, the target
//! and stable revisions, the step, the history, the tokens of acted-on requests. Progress
//! (counts, the pod list, conditions, the message) decides nothing and is coalesced to one
//! write a second. [`carry_out`] performs a plan through [`Effects`], which the controller
//! implements with the API server and the sidecar registry, and the tests with a recorder.

use std::time::{Duration, Instant};

use crate::api::PluginReleaseStatus;
use crate::planner::{Note, Plan};

/// Status writes per release are at most this frequent when they only record progress.
pub const MIN_WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// The longest back-off between status writes after failures.
const MAX_WRITE_BACKOFF: Duration = Duration::from_secs(60);

/// What a release's last plan left behind for the next one.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    /// The status planned last: its decisions are durable (written, or read from the API
    /// server), its progress may wait to be written. The next plan starts from it, never
    /// from an older cached status (which would undo a decision such as a rollback).
    pub status: PluginReleaseStatus,
    /// Events waiting for the status that explains them, each with its revision.
    pub notes: Vec<(Note, Option<String>)>,
    /// When status was last written.
    pub written: Option<Instant>,
    /// Status writes that failed in a row.
    pub failures: u32,
    /// When the last of them failed.
    pub failed_at: Option<Instant>,
}

impl Memory {
    /// A release this replica has not planned yet: its status as the API server has it.
    pub fn of_cached(status: Option<&PluginReleaseStatus>) -> Self {
        Memory {
            status: status.cloned().unwrap_or_default(),
            ..Memory::default()
        }
    }

    /// How long until status may be written again after the failures in a row (`None`: now).
    pub fn backoff_left(&self, now: Instant) -> Option<Duration> {
        let failed_at = self.failed_at.filter(|_| self.failures > 0)?;
        let waited = now.saturating_duration_since(failed_at);
        let left = write_backoff(self.failures).saturating_sub(waited);
        (!left.is_zero()).then_some(left)
    }

    fn failed(mut self, now: Instant) -> Self {
        self.failures = self.failures.saturating_add(1);
        self.failed_at = Some(now);
        self
    }
}

/// The back-off after `failures` status writes failed in a row: 1 s, doubling, at most 60 s.
pub fn write_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(6);
    (Duration::from_secs(1) * 2u32.pow(doublings)).min(MAX_WRITE_BACKOFF)
}

/// Whether `planned` makes a decision that `durable` does not record: it changes what the
/// status says pods are to run, or which requests were acted on.
pub fn decides(durable: &PluginReleaseStatus, planned: &PluginReleaseStatus) -> bool {
    let (d, p) = (durable, planned);
    d.phase != p.phase
        || d.target_revision != p.target_revision
        || d.stable_revision != p.stable_revision
        || d.current_step != p.current_step
        || d.step_started_at != p.step_started_at
        || d.history != p.history
        || d.retry_token != p.retry_token
        || d.resume_token != p.resume_token
        || d.abort_token != p.abort_token
}

/// How a plan may go out, given what is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Publication {
    /// The status is written as planned: send the assignments.
    Send,
    /// The plan decides something the written status does not say: write it, and send the
    /// assignments only once it is written.
    WriteThenSend,
    /// Progress only: send (it follows from written decisions), then write.
    SendThenWrite,
    /// Progress only, and status was written (or a write failed) lately: send, and write
    /// after this long.
    SendThenWriteAfter(Duration),
    /// A decision, while writes back off after failing: send nothing; plan again after
    /// this long.
    Wait(Duration),
}

/// Which way `planned` may be published: `memory` holds the last plan, whose decisions are
/// durable; `cached` is the status as the API server last showed it.
pub fn publication(
    memory: &Memory,
    cached: Option<&PluginReleaseStatus>,
    planned: &PluginReleaseStatus,
    now: Instant,
) -> Publication {
    if cached == Some(planned) {
        return Publication::Send;
    }
    let backoff = memory.backoff_left(now);
    if decides(&memory.status, planned) {
        return backoff.map_or(Publication::WriteThenSend, Publication::Wait);
    }
    let coalesce = memory
        .written
        .map(|at| MIN_WRITE_INTERVAL.saturating_sub(now.saturating_duration_since(at)))
        .filter(|left| !left.is_zero());
    match (backoff, coalesce) {
        (None, None) => Publication::SendThenWrite,
        (a, b) => Publication::SendThenWriteAfter(a.unwrap_or_default().max(b.unwrap_or_default())),
    }
}

/// What carrying out a plan does outside: the controller's is the API server and the
/// sidecar registry.
pub trait Effects {
    /// Writes the release's status (server-side apply).
    async fn write(&self, status: &PluginReleaseStatus) -> Result<(), kube::Error>;
    /// Sends the plan's assignments to the sidecars.
    async fn send(&self, plan: &Plan);
    /// Records an event whose status is written.
    async fn record(&self, note: &Note, revision: Option<&str>);
}

/// The outcome of [`carry_out`].
#[derive(Debug)]
pub struct Carried {
    /// What the next plan starts from.
    pub memory: Memory,
    /// Plan again after this long (a coalesced write or a back-off), at the latest.
    pub requeue: Option<Duration>,
    /// The status write that failed.
    pub error: Option<kube::Error>,
}

/// Performs `plan` in the order [`publication`] allows: a decision is written before any
/// assignment goes out, and not sent at all if the write fails.
pub async fn carry_out<E: Effects>(
    effects: &E,
    memory: Memory,
    plan: Plan,
    cached: Option<&PluginReleaseStatus>,
    now: Instant,
) -> Carried {
    match publication(&memory, cached, &plan.status, now) {
        Publication::Wait(wait) => Carried {
            memory,
            requeue: Some(wait),
            error: None,
        },
        Publication::WriteThenSend => match effects.write(&plan.status).await {
            // Nothing was decided: the next plan decides again from the same durable status.
            Err(error) => Carried {
                memory: memory.failed(now),
                requeue: None,
                error: Some(error),
            },
            Ok(()) => {
                effects.send(&plan).await;
                settle(effects, memory, plan, Durable::WrittenAt(now)).await
            }
        },
        Publication::Send => {
            effects.send(&plan).await;
            settle(effects, memory, plan, Durable::Already).await
        }
        Publication::SendThenWriteAfter(wait) => {
            effects.send(&plan).await;
            let mut carried = settle(effects, memory, plan, Durable::NotYet).await;
            carried.requeue = Some(wait);
            carried
        }
        Publication::SendThenWrite => {
            effects.send(&plan).await;
            match effects.write(&plan.status).await {
                Ok(()) => settle(effects, memory, plan, Durable::WrittenAt(now)).await,
                Err(error) => {
                    let mut carried = settle(effects, memory, plan, Durable::NotYet).await;
                    carried.memory = carried.memory.failed(now);
                    carried.error = Some(error);
                    carried
                }
            }
        }
    }
}

/// Whether a plan's status is durable once its assignments went out.
enum Durable {
    /// It equals the status the API server has.
    Already,
    /// It was written then.
    WrittenAt(Instant),
    /// It waits to be written.
    NotYet,
}

/// The plan becomes the memory; its events (and those waiting before) are recorded once its
/// status is durable.
async fn settle<E: Effects>(effects: &E, memory: Memory, plan: Plan, durable: Durable) -> Carried {
    let revision = plan.status.target_revision.clone();
    let mut notes = memory.notes;
    notes.extend(plan.notes.into_iter().map(|n| (n, revision.clone())));
    let mut next = Memory {
        status: plan.status,
        notes: Vec::new(),
        ..memory
    };
    if let Durable::WrittenAt(at) = durable {
        next.written = Some(at);
        next.failures = 0;
        next.failed_at = None;
    }
    match durable {
        Durable::NotYet => next.notes = notes,
        Durable::Already | Durable::WrittenAt(_) => {
            for (note, revision) in notes {
                effects.record(&note, revision.as_deref()).await;
            }
        }
    }
    Carried {
        memory: next,
        requeue: None,
        error: None,
    }
}

#[cfg(test)]
#[path = "durable_tests.rs"]
mod tests;
