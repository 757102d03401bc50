//! Leader election on a coordination.k8s.io Lease. Only the leader reconciles and accepts
//! sidecar streams, and it labels its own pod [`LEADER_LABEL`], which the channel Service
//! selects; standbys are Ready too (they serve the injection webhook).
//!
//! No API error ends the process: a standby whose attempt fails (an API server restarting,
//! a 429) backs off (capped, jittered) and tries again; a leader that cannot renew within
//! two thirds of the lease's duration steps down before another replica may take the lease
//! (it stops reconciling, ends its sidecar streams, drops its label when it can) and
//! competes again. The webhook is served throughout; only a signal ends the process.
//!
//! ```text
//!  LeaseClient::attempt ──Holds/Follows/Failed──▶ next(state, outcome, now) ──▶ Lead | StepDown | wait
//!        (I/O)                                          (pure)                     run() acts
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;

use crate::admin::Health;

/// What to do with the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder let it expire: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds a live lease.
    Follow,
}

/// Decides from the lease as read, who we are, and for how long this replica has seen the
/// lease record unchanged (its holder and renew time). Expiry is judged on this replica's
/// own clock, as client-go does: comparing the holder's `renewTime` with our clock would
/// hand the lease over early whenever the two nodes' clocks disagree.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> Decision {
    let Some(spec) = lease else {
        return Decision::Acquire;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => Decision::Acquire,
        Some(holder) if holder == me => Decision::Renew,
        Some(_) => {
            let seconds = spec.lease_duration_seconds.unwrap_or(15);
            let duration = Duration::from_secs(u64::try_from(seconds).unwrap_or(15));
            if unchanged_for > duration {
                Decision::Acquire
            } else {
                Decision::Follow
            }
        }
    }
}

/// Settings of the election.
#[derive(Clone, Debug)]
pub struct Election {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a lease lives without renewal.
    pub duration: Duration,
    /// This replica's pod (namespace, name), labelled [`LEADER_LABEL`] while it leads
    /// (in-cluster only).
    pub pod: Option<(String, String)>,
}

/// The label the leader puts on its own pod; the channel Service selects it.
pub const LEADER_LABEL: &str = "hotload.dev/leader";

/// When the election acts, derived from the lease's duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How often a leader renews and a standby looks.
    pub retry_period: Duration,
    /// A leader that has not renewed for this long steps down: before the lease's duration
    /// is up, so no other replica can take it while this one still acts.
    pub renew_deadline: Duration,
    /// The first back-off after a failed attempt; it doubles with each further failure.
    pub backoff_base: Duration,
    /// The longest back-off.
    pub backoff_cap: Duration,
}

impl Timing {
    /// client-go's proportions: renew every third of the duration, give up at two thirds.
    pub fn for_lease(duration: Duration) -> Self {
        Self {
            retry_period: duration / 3,
            renew_deadline: duration * 2 / 3,
            backoff_base: Duration::from_millis(500),
            backoff_cap: duration,
        }
    }
}

/// Whether this replica leads, and since when its lease was last renewed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// Serves the webhook and watches; acts on nothing.
    #[default]
    Standby,
    /// Reconciles and accepts sidecar streams.
    Leading {
        /// When the last successful renewal began.
        renewed: Instant,
    },
}

/// The election's memory between attempts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Leading or not.
    pub role: Role,
    /// Attempts failed in a row (for the back-off).
    pub failures: u32,
}

/// How one attempt on the lease went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This replica holds the lease: the attempt that began at `since` took or renewed it.
    Holds {
        /// When the attempt began (the renewal is counted from then, to be safe).
        since: Instant,
    },
    /// Another replica holds a live lease.
    Follows,
    /// The attempt failed or timed out (API error, 429, conflict, no answer).
    Failed,
}

/// A change of role the loop carries out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Start leading: label the pod, reconcile, accept sidecars.
    Lead,
    /// Stop leading: stop reconciling, end sidecar streams, drop the label.
    StepDown,
}

/// What [`next`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Next {
    /// The state to carry into the next attempt.
    pub state: State,
    /// A change of role to carry out now, if any.
    pub change: Option<Change>,
    /// How long to wait before the next attempt.
    pub wait: Duration,
}

/// The election's decision after an attempt, at `now`; `jitter` in `[0, 1)` spreads the
/// back-off of replicas that failed together. Pure. No outcome ends the election.
pub fn next(state: State, outcome: Outcome, now: Instant, timing: &Timing, jitter: f64) -> Next {
    let lead = |since| State {
        role: Role::Leading { renewed: since },
        failures: 0,
    };
    match (state.role, outcome) {
        (Role::Standby, Outcome::Holds { since }) => Next {
            state: lead(since),
            change: Some(Change::Lead),
            wait: timing.retry_period,
        },
        (Role::Leading { .. }, Outcome::Holds { since }) => Next {
            state: lead(since),
            change: None,
            wait: timing.retry_period,
        },
        (role, Outcome::Follows) => Next {
            state: State::default(),
            change: matches!(role, Role::Leading { .. }).then_some(Change::StepDown),
            wait: timing.retry_period,
        },
        (Role::Standby, Outcome::Failed) => {
            let failures = state.failures.saturating_add(1);
            Next {
                state: State {
                    role: Role::Standby,
                    failures,
                },
                change: None,
                wait: backoff(failures, timing, jitter),
            }
        }
        (Role::Leading { renewed }, Outcome::Failed) => {
            let failures = state.failures.saturating_add(1);
            let wait = backoff(failures, timing, jitter);
            let deadline = renewed + timing.renew_deadline;
            if now >= deadline {
                return Next {
                    state: State {
                        role: Role::Standby,
                        failures,
                    },
                    change: Some(Change::StepDown),
                    wait,
                };
            }
            Next {
                state: State {
                    role: state.role,
                    failures,
                },
                change: None,
                // Try again before the deadline, whatever the back-off says.
                wait: wait.min(deadline - now),
            }
        }
    }
}

/// How long an attempt may take at `now`: a leader's only until its renew deadline (so an
/// API server that hangs makes it step down in time), a standby's a renew deadline.
pub fn attempt_limit(state: &State, now: Instant, timing: &Timing) -> Duration {
    match state.role {
        Role::Leading { renewed } => {
            (renewed + timing.renew_deadline).saturating_duration_since(now)
        }
        Role::Standby => timing.renew_deadline,
    }
}

/// The wait after `failures` failed attempts in a row: doubling from the base, capped, the
/// upper half jittered ("equal jitter").
pub fn backoff(failures: u32, timing: &Timing, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let full = timing
        .backoff_base
        .saturating_mul(1 << doublings)
        .min(timing.backoff_cap);
    full / 2 + (full / 2).mul_f64(jitter.clamp(0.0, 1.0))
}

/// A number in `[0, 1)` that differs between calls and replicas.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    // 53 random bits, the precision of an f64 in [0, 1).
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The lease as the election loop sees it: one attempt at a time, and the pod label.
pub trait LeaseClient {
    /// Reads the lease and takes or renews it if [`decide`] says so. `Ok(true)`: this
    /// replica holds it now; `Ok(false)`: another replica's live lease; `Err`: the API
    /// failed (or a racing write won), to be tried again.
    fn attempt(&self, seen: &mut Seen) -> impl Future<Output = anyhow::Result<bool>> + Send;

    /// Sets or clears [`LEADER_LABEL`] on this replica's pod.
    fn label(&self, leading: bool) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Runs the election for as long as the process runs; it never returns. `on_change` hears
/// every change of role after [`Health`] has: `false` when stepping down, so whatever
/// served as leader (sidecar streams) is ended.
pub async fn run<L: LeaseClient>(
    lease: L,
    timing: Timing,
    health: Arc<Health>,
    on_change: impl Fn(bool),
) -> std::convert::Infallible {
    let mut state = State::default();
    let mut seen = Seen::default();
    // A restarted replica may carry the label from before: unknown until cleared.
    let mut labelled: Option<bool> = None;
    loop {
        let outcome = try_lease(&lease, &mut seen, &state, &timing).await;
        let decided = Instant::now();
        let step = next(state, outcome, decided, &timing, jitter());
        match step.change {
            Some(Change::Lead) => {
                tracing::info!("leading: took the leader lease");
                health.set_leading(true);
                on_change(true);
            }
            Some(Change::StepDown) => {
                tracing::warn!(
                    renew_deadline_ms = timing.renew_deadline.as_millis(),
                    "stepping down: the leader lease was lost or could not be renewed in time; standing by"
                );
                health.set_leading(false);
                on_change(false);
            }
            None => {}
        }
        state = step.state;
        let leading = matches!(state.role, Role::Leading { .. });
        if labelled != Some(leading) {
            // Bounded, and counted in the wait: a hanging label must not delay the renewal.
            let limit = step.wait.min(timing.retry_period / 2);
            labelled = relabel(&lease, leading, limit).await.or(labelled);
        }
        tokio::time::sleep_until(decided + step.wait).await;
    }
}

/// One attempt on the lease, bounded by [`attempt_limit`]; a failure is logged, with how
/// many came in a row.
async fn try_lease<L: LeaseClient>(
    lease: &L,
    seen: &mut Seen,
    state: &State,
    timing: &Timing,
) -> Outcome {
    let started = Instant::now();
    let limit = attempt_limit(state, started, timing);
    let failures = state.failures + 1;
    match tokio::time::timeout(limit, lease.attempt(seen)).await {
        Ok(Ok(true)) => Outcome::Holds { since: started },
        Ok(Ok(false)) => Outcome::Follows,
        Ok(Err(error)) => {
            let error = format!("{error:#}");
            tracing::warn!(error, failures, "leader lease attempt failed; trying again");
            Outcome::Failed
        }
        Err(_) => {
            let timeout_ms = limit.as_millis();
            tracing::warn!(
                timeout_ms,
                failures,
                "leader lease attempt timed out; trying again"
            );
            Outcome::Failed
        }
    }
}

/// Puts the label as `leading` says, within `limit`; `Some(leading)` once done. A failure is
/// logged and tried again on the next round: neither a leader nor a standby stops for it.
async fn relabel<L: LeaseClient>(lease: &L, leading: bool, limit: Duration) -> Option<bool> {
    match tokio::time::timeout(limit, lease.label(leading)).await {
        Ok(Ok(())) => Some(leading),
        Ok(Err(error)) => {
            let error = format!("{error:#}");
            tracing::warn!(
                error,
                leading,
                "could not set the leader label; trying again"
            );
            None
        }
        Err(_) => {
            tracing::warn!(leading, "setting the leader label timed out; trying again");
            None
        }
    }
}

/// The election against the API server.
pub struct KubeLease {
    client: Client,
    leases: Api<Lease>,
    election: Election,
}

impl KubeLease {
    /// The lease `election` names, through `client`.
    pub fn new(client: Client, election: Election) -> Self {
        let leases = Api::namespaced(client.clone(), &election.namespace);
        Self {
            client,
            leases,
            election,
        }
    }
}

impl LeaseClient for KubeLease {
    fn attempt(&self, seen: &mut Seen) -> impl Future<Output = anyhow::Result<bool>> + Send {
        attempt(&self.leases, &self.election, seen)
    }

    fn label(&self, leading: bool) -> impl Future<Output = anyhow::Result<()>> + Send {
        label_pod(&self.client, &self.election, leading)
    }
}

/// Sets or clears [`LEADER_LABEL`] on this replica's pod.
async fn label_pod(client: &Client, election: &Election, leading: bool) -> anyhow::Result<()> {
    let Some((namespace, pod)) = &election.pod else {
        return Ok(());
    };
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    let value = if leading {
        serde_json::json!("true")
    } else {
        serde_json::Value::Null
    };
    let patch = serde_json::json!({"metadata": {"labels": {LEADER_LABEL: value}}});
    pods.patch(
        pod,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .map_err(|e| anyhow::anyhow!("labelling pod {namespace}/{pod}: {e}"))?;
    Ok(())
}

/// The lease record as last seen (holder, renew time), and since when on this replica's
/// clock.
#[derive(Debug, Default)]
pub struct Seen {
    record: Option<(Option<String>, Option<MicroTime>)>,
    since: Option<Instant>,
}

impl Seen {
    /// Records `spec` as read now; returns for how long it has been unchanged.
    fn observe(&mut self, spec: Option<&LeaseSpec>) -> Duration {
        let record = spec.map(|s| (s.holder_identity.clone(), s.renew_time.clone()));
        let now = Instant::now();
        if self.record != record || self.since.is_none() {
            self.record = record;
            self.since = Some(now);
        }
        self.since.map_or(Duration::ZERO, |since| now - since)
    }
}

/// One round: reads the lease, and takes or renews it if [`decide`] says so. Returns
/// whether this replica holds it now.
async fn attempt(
    leases: &Api<Lease>,
    election: &Election,
    seen: &mut Seen,
) -> anyhow::Result<bool> {
    let seconds = i32::try_from(election.duration.as_secs()).unwrap_or(15);
    let current = leases.get_opt(&election.name).await?;
    let spec = current.as_ref().and_then(|l| l.spec.as_ref());
    let decision = decide(spec, &election.identity, seen.observe(spec));
    if decision == Decision::Follow {
        return Ok(false);
    }
    let now = Timestamp::now();
    let acquired_before = spec.and_then(|s| s.acquire_time.clone());
    let transitions = spec.and_then(|s| s.lease_transitions).unwrap_or(0);
    let spec = LeaseSpec {
        holder_identity: Some(election.identity.clone()),
        lease_duration_seconds: Some(seconds),
        renew_time: Some(MicroTime(now)),
        acquire_time: if decision == Decision::Renew {
            acquired_before
        } else {
            Some(MicroTime(now))
        },
        lease_transitions: Some(if decision == Decision::Acquire {
            transitions + 1
        } else {
            transitions
        }),
        ..Default::default()
    };
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(election.name.clone()),
            // Optimistic concurrency: a racing replica's write makes ours fail.
            resource_version: current
                .as_ref()
                .and_then(|l| l.metadata.resource_version.clone()),
            ..Default::default()
        },
        spec: Some(spec),
    };
    let written = match &current {
        Some(_) => {
            leases
                .replace(&election.name, &PostParams::default(), &lease)
                .await
        }
        None => leases.create(&PostParams::default(), &lease).await,
    };
    match written {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "writing the leader lease {}/{}",
            election.namespace, election.name
        ))),
    }
}

/// Gives the lease up if this replica holds it, so a successor (a rolling upgrade's new
/// pod) takes over at once instead of waiting for it to expire.
pub async fn release(client: Client, election: &Election) -> anyhow::Result<()> {
    label_pod(&client, election, false).await?;
    let leases: Api<Lease> = Api::namespaced(client, &election.namespace);
    let Some(mut lease) = leases.get_opt(&election.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(election.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.acquire_time = None;
    spec.renew_time = None;
    // resourceVersion is kept: if someone took it meanwhile, there is nothing to give up.
    match leases
        .replace(&election.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn free_or_expired_leases_are_taken_live_ones_followed() {
        let secs = Duration::from_secs;
        assert_eq!(decide(None, "a", secs(0)), Decision::Acquire);
        assert_eq!(decide(Some(&spec("a", 990)), "a", secs(0)), Decision::Renew);
        assert_eq!(
            decide(Some(&spec("b", 990)), "a", secs(10)),
            Decision::Follow
        );
        assert_eq!(
            decide(Some(&spec("b", 980)), "a", secs(16)),
            Decision::Acquire,
            "unchanged for longer than its 15 s"
        );
        assert_eq!(
            decide(Some(&spec("", 999)), "a", secs(0)),
            Decision::Acquire
        );
    }

    const LEASE: Duration = Duration::from_secs(15);

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn a_standby_that_fails_backs_off_capped_and_never_gives_up() {
        let timing = Timing::for_lease(LEASE);
        let t0 = Instant::now();
        let mut state = State::default();
        let mut waits = Vec::new();
        for n in 0..40 {
            let step = next(state, Outcome::Failed, at(t0, n), &timing, 0.99);
            assert_eq!(
                step.change, None,
                "an API error changes nothing for a standby"
            );
            assert_eq!(step.state.role, Role::Standby);
            waits.push(step.wait);
            state = step.state;
        }
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert!(waits[0] <= Duration::from_millis(500));
        assert!(
            *waits.last().unwrap() <= LEASE,
            "capped at the lease's duration"
        );
        let low = backoff(30, &timing, 0.0);
        let high = backoff(30, &timing, 0.999);
        assert_eq!(low, LEASE / 2, "jitter spreads the upper half");
        assert!(high > low && high <= LEASE);
        // The API is back: the lease is free, or held by someone else.
        let won = next(state, Outcome::Holds { since: t0 }, t0, &timing, 0.5);
        assert_eq!(won.change, Some(Change::Lead));
        assert_eq!(won.state.failures, 0);
        let follows = next(state, Outcome::Follows, t0, &timing, 0.5);
        assert_eq!((follows.change, follows.state), (None, State::default()));
    }

    #[test]
    fn a_leader_keeps_leading_through_errors_until_its_renew_deadline_then_steps_down() {
        let timing = Timing::for_lease(LEASE);
        let t0 = Instant::now();
        let leading = next(
            State::default(),
            Outcome::Holds { since: t0 },
            t0,
            &timing,
            0.5,
        );
        assert_eq!(leading.change, Some(Change::Lead));
        assert_eq!(leading.wait, LEASE / 3, "renews every third of the lease");

        let failed = next(leading.state, Outcome::Failed, at(t0, 9), &timing, 0.99);
        assert_eq!(failed.change, None, "still within its 10 s to renew");
        assert!(
            failed.wait <= Duration::from_secs(1),
            "tries again before the deadline"
        );
        assert_eq!(
            attempt_limit(&failed.state, at(t0, 9), &timing),
            Duration::from_secs(1),
            "an attempt may not outlast the deadline"
        );

        let late = next(failed.state, Outcome::Failed, at(t0, 10), &timing, 0.5);
        assert_eq!(late.change, Some(Change::StepDown));
        assert_eq!(late.state.role, Role::Standby);
        assert_eq!(
            attempt_limit(&late.state, at(t0, 10), &timing),
            timing.renew_deadline
        );

        // Standing by, it competes again: the lease is still its own, or another's.
        let back = next(
            late.state,
            Outcome::Holds { since: at(t0, 12) },
            at(t0, 12),
            &timing,
            0.5,
        );
        assert_eq!(back.change, Some(Change::Lead));
        let lost = next(leading.state, Outcome::Follows, at(t0, 3), &timing, 0.5);
        assert_eq!(
            lost.change,
            Some(Change::StepDown),
            "another replica took it"
        );
    }

    /// A lease client that answers from a script (then repeats its last answer), and
    /// records when each label went on or off.
    #[derive(Clone, Default)]
    struct Scripted {
        answers: Arc<std::sync::Mutex<std::collections::VecDeque<Result<bool, &'static str>>>>,
        attempts: Arc<std::sync::atomic::AtomicUsize>,
        labels: Arc<std::sync::Mutex<Vec<(Duration, bool)>>>,
        start: Option<Instant>,
        hang: bool,
        label_hangs: bool,
    }

    impl Scripted {
        fn new(answers: &[Result<bool, &'static str>]) -> Self {
            Self {
                answers: Arc::new(std::sync::Mutex::new(answers.iter().copied().collect())),
                start: Some(Instant::now()),
                ..Self::default()
            }
        }
        fn elapsed(&self) -> Duration {
            self.start.map_or(Duration::ZERO, |s| s.elapsed())
        }
    }

    impl LeaseClient for Scripted {
        fn attempt(&self, _: &mut Seen) -> impl Future<Output = anyhow::Result<bool>> + Send {
            self.attempts
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut answers = self.answers.lock().unwrap();
            let answer = if answers.len() > 1 {
                answers.pop_front().unwrap()
            } else {
                answers[0]
            };
            let hang = self.hang && answer.is_err();
            async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                // An API call takes a little while.
                tokio::time::sleep(Duration::from_millis(50)).await;
                answer.map_err(|e| anyhow::anyhow!("{e}"))
            }
        }

        fn label(&self, leading: bool) -> impl Future<Output = anyhow::Result<()>> + Send {
            self.labels.lock().unwrap().push((self.elapsed(), leading));
            let hang = self.label_hangs;
            async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                Ok(())
            }
        }
    }

    /// Runs the election on `lease` for `secs` of (paused) time; returns the changes of
    /// role heard, with when.
    async fn elect(lease: Scripted, secs: u64) -> Vec<(Duration, bool)> {
        let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
        let health = Arc::new(Health::default());
        let (start, log) = (Instant::now(), heard.clone());
        let running = run(lease, Timing::for_lease(LEASE), health, move |leading| {
            log.lock().unwrap().push((start.elapsed(), leading));
        });
        let ended = tokio::time::timeout(Duration::from_secs(secs), running).await;
        assert!(ended.is_err(), "the election never ends");
        heard.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_survives_api_errors_and_takes_the_lease_once_the_api_is_back() {
        let mut script =
            vec![Err("the server is currently unable to handle the request (429)"); 30];
        script.push(Ok(true));
        let lease = Scripted::new(&script);
        let heard = elect(lease.clone(), 600).await;
        assert_eq!(heard.len(), 1, "{heard:?}");
        assert!(heard[0].1, "it leads in the end");
        assert!(lease.attempts.load(std::sync::atomic::Ordering::SeqCst) > 31);
        let labels = lease.labels.lock().unwrap().clone();
        assert_eq!(
            labels.iter().map(|(_, l)| *l).collect::<Vec<_>>(),
            [false, true],
            "a stale label is cleared first, then set on leading"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_api_hangs_steps_down_within_its_renew_deadline_and_competes_again() {
        let mut script = vec![Ok(true)];
        script.extend([Err("apiserver restarting"); 12]);
        script.push(Ok(true));
        let mut lease = Scripted::new(&script);
        lease.hang = true;
        let heard = elect(lease.clone(), 600).await;
        let roles: Vec<bool> = heard.iter().map(|(_, l)| *l).collect();
        assert_eq!(roles, [true, false, true], "{heard:?}");
        let (led, stepped_down) = (heard[0].0, heard[1].0);
        assert!(
            stepped_down - led <= LEASE * 2 / 3 + Duration::from_millis(10),
            "stepped down {:?} after the last renewal, before another replica could take the lease",
            stepped_down - led
        );
        let labels = lease.labels.lock().unwrap().clone();
        let labels: Vec<bool> = labels.iter().map(|(_, l)| *l).collect();
        assert_eq!(labels, [true, false, true], "the label follows the role");
    }

    #[tokio::test(start_paused = true)]
    async fn a_label_that_hangs_neither_delays_renewal_nor_unseats_the_leader() {
        let mut lease = Scripted::new(&[Ok(true)]);
        lease.label_hangs = true;
        let heard = elect(lease.clone(), 120).await;
        assert_eq!(
            heard.iter().map(|(_, l)| *l).collect::<Vec<_>>(),
            [true],
            "{heard:?}"
        );
        assert!(
            lease.labels.lock().unwrap().len() > 10,
            "the label is tried again each round"
        );
    }

    /// An API server holding one Lease, that answers 503 to everything while `down`.
    fn fake_api(down: Arc<std::sync::atomic::AtomicBool>) -> Client {
        use crate::listener::testing::failure;
        use axum::http::Method;
        let stored: Arc<std::sync::Mutex<Option<serde_json::Value>>> = Arc::default();
        crate::listener::testing::fake_api(move |method, path, body| {
            if down.load(std::sync::atomic::Ordering::SeqCst) {
                return (503, failure(503, "ServiceUnavailable"));
            }
            if path.contains("/pods/") {
                return (
                    200,
                    serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "op-0"}}),
                );
            }
            let mut stored = stored.lock().unwrap();
            let version =
                |l: &serde_json::Value| l["metadata"]["resourceVersion"].as_str().map(String::from);
            if *method == Method::GET {
                return stored
                    .clone()
                    .map_or_else(|| (404, failure(404, "NotFound")), |l| (200, l));
            }
            let mut lease: serde_json::Value = serde_json::from_slice(body).unwrap();
            let current = stored.as_ref().and_then(version);
            if (*method == Method::PUT) != current.is_some() || version(&lease) != current {
                return (409, failure(409, "Conflict"));
            }
            let next = current.map_or(1, |v| v.parse::<u64>().unwrap() + 1);
            lease["metadata"]["resourceVersion"] = next.to_string().into();
            lease["kind"] = "Lease".into();
            lease["apiVersion"] = "coordination.k8s.io/v1".into();
            *stored = Some(lease.clone());
            (200, lease)
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_api_server_outage_makes_the_leader_step_down_and_lead_again_never_exit() {
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let election = Election {
            namespace: "ops".into(),
            name: "hotload".into(),
            identity: "op-0".into(),
            duration: LEASE,
            pod: Some(("ops".into(), "op-0".into())),
        };
        let health = Arc::new(Health::default());
        health.set_synced();
        let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = heard.clone();
        let start = Instant::now();
        let election_runs = run(
            KubeLease::new(fake_api(down.clone()), election),
            Timing::for_lease(LEASE),
            health.clone(),
            move |leading| log.lock().unwrap().push((start.elapsed(), leading)),
        );
        let outage = async {
            tokio::time::sleep(Duration::from_secs(20)).await;
            assert!(health.ready(), "leading before the outage");
            down.store(true, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert!(!health.ready(), "stood down during the outage");
            down.store(false, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(30)).await;
        };
        tokio::select! {
            never = election_runs => match never {},
            () = outage => {}
        }
        assert!(health.ready(), "leads again once the API server is back");
        let heard = heard.lock().unwrap().clone();
        let roles: Vec<bool> = heard.iter().map(|(_, l)| *l).collect();
        assert_eq!(roles, [true, false, true], "{heard:?}");
        let stepped_down = heard[1].0;
        assert!(
            stepped_down > Duration::from_secs(20) && stepped_down <= Duration::from_secs(31),
            "within the renew deadline of the last renewal before the outage: {stepped_down:?}"
        );
    }

    #[test]
    fn expiry_is_judged_on_our_clock_not_the_holders_renew_time() {
        // A renew time an hour old on our clock (the holder's clock is behind) is still a
        // live lease while we see it change.
        let mut seen = Seen::default();
        let stale = spec("b", 0);
        assert!(seen.observe(Some(&stale)) < Duration::from_secs(1));
        assert_eq!(
            decide(Some(&stale), "a", seen.observe(Some(&stale))),
            Decision::Follow
        );
        let renewed = spec("b", 5);
        assert!(
            seen.observe(Some(&renewed)) < Duration::from_secs(1),
            "a renewal restarts it"
        );
    }
}
