//! A chaos run's plan: which releases it applies and which faults it injects, in what order
//! and with what timing, decided by the seed alone. Pure: the same seed gives the same plan
//! on every machine, so a failing run is replayed with `--runs 1 --seed S`.
//!
//! ```text
//! seed ─► Rng (SplitMix64) ─────────► Plan { steps: [Step { action, fault?, fault_after, gap,
//! seed ^ EXTENSION_SALT ─► Rng ─────►                       delivery }, …] }
//! ```
//!
//! The second stream decides what the harness learnt later (OCI delivery; the registry, the
//! operator's network and a full emptyDir as faults), so a seed recorded before keeps its
//! actions, its first faults and their timing: the later faults land only in steps that had
//! none.

use std::fmt;
use std::time::Duration;

/// Fewest steps a run takes.
pub const MIN_STEPS: usize = 3;
/// Most steps a run takes.
pub const MAX_STEPS: usize = 6;
/// Longest pause after a step's action before the next one (the fault lands inside it).
pub const MAX_GAP: Duration = Duration::from_millis(4_000);
/// Longest any outage or slowdown of the artifact host lasts.
pub const MAX_OUTAGE_SECONDS: u8 = 8;
/// Shortest and longest time the operator leader is cut off from the API server. It steps
/// down when it has not renewed its 15 s lease for 10 s, and the standby takes the lease
/// once it has seen it unchanged for 15 s: some cuts end before either, some after both.
pub const CUT_OFF_SECONDS: (u8, u8) = (6, 20);
/// Shortest and longest time a pod's emptyDir stays full.
pub const FULL_SECONDS: (u8, u8) = (3, 10);
/// Seeds the second stream (see the module doc).
pub const EXTENSION_SALT: u64 = 0x6f63_692d_6e65_7473;
/// The Deployment's size at the start of every run.
pub const BASE_PODS: u8 = 4;
/// Fewest and most pods a scale fault asks for.
pub const SCALE_RANGE: (u8, u8) = (2, 6);

/// SplitMix64 (Steele, Lea and Flood): small, fast and fully determined by its seed, which
/// is all a plan needs (no new dependency, no platform-dependent output).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator started at `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi` (`lo` when `hi < lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let span = hi - lo + 1;
        lo + self.next_u64() % span
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 99) < percent
    }

    /// One of `items` (None when empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        let last = u64::try_from(items.len().checked_sub(1)?).ok()?;
        items.get(usize::try_from(self.range(0, last)).ok()?)
    }
}

/// What a step asks of the release, as a user or a GitOps tool would.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Apply tagger `version` (1 or 2), `max_unavailable` pods at a time, each held
    /// `min_ready_seconds` before the next.
    Good {
        version: u8,
        max_unavailable: u8,
        min_ready_seconds: u8,
    },
    /// Apply a revision whose self-check fails (the release rolls back).
    Broken { max_unavailable: u8 },
    /// Apply tagger `version` with a cosign signature the release requires.
    Signed { version: u8 },
    /// Apply tagger `version` as a canary: `percent` of the pods, a timed pause, the rest.
    Canary {
        version: u8,
        percent: u8,
        pause_seconds: u8,
    },
    /// `kubectl hotload abort` (refused unless a rollout is under way).
    Abort,
    /// `kubectl hotload retry` (refused unless the release rolled back or failed).
    Retry,
    /// Apply again the spec applied before the last one (a `git revert` synced by GitOps).
    Revert,
}

/// Every action kind, by [`Action::kind`].
pub const ACTION_KINDS: [&str; 7] = [
    "good", "broken", "signed", "canary", "abort", "retry", "revert",
];

impl Action {
    /// The action's kind, for counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Good { .. } => "good",
            Action::Broken { .. } => "broken",
            Action::Signed { .. } => "signed",
            Action::Canary { .. } => "canary",
            Action::Abort => "abort",
            Action::Retry => "retry",
            Action::Revert => "revert",
        }
    }

    fn random(rng: &mut Rng) -> Self {
        let version = u8::from(rng.chance(50)) + 1;
        match rng.range(0, 9) {
            0..=2 => Action::Good {
                version,
                max_unavailable: rng.range(1, 2) as u8,
                min_ready_seconds: rng.range(0, 2) as u8,
            },
            3 => Action::Broken {
                max_unavailable: rng.range(1, 2) as u8,
            },
            4 => Action::Signed { version },
            5 => Action::Canary {
                version,
                percent: *rng.pick(&[25, 50]).unwrap_or(&50),
                pause_seconds: rng.range(1, 4) as u8,
            },
            6 => Action::Abort,
            7 => Action::Retry,
            _ => Action::Revert,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Good {
                version,
                max_unavailable,
                min_ready_seconds,
            } => write!(
                f,
                "good v{version} (maxUnavailable {max_unavailable}, minReadySeconds {min_ready_seconds})"
            ),
            Action::Broken { max_unavailable } => {
                write!(f, "broken (maxUnavailable {max_unavailable})")
            }
            Action::Signed { version } => write!(f, "signed v{version}"),
            Action::Canary {
                version,
                percent,
                pause_seconds,
            } => write!(f, "canary v{version} ({percent}%, pause {pause_seconds}s)"),
            Action::Abort => write!(f, "abort"),
            Action::Retry => write!(f, "retry"),
            Action::Revert => write!(f, "revert the spec"),
        }
    }
}

/// A fault injected while the release acts. Pods are named by index into the pods of the
/// moment, sorted by name (modulo their number).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` the operator replica that leads.
    KillLeader,
    /// `kill -9` an operator replica that does not lead.
    KillStandby,
    /// `kill -9` a pod's sidecar.
    KillSidecar { pod: u8 },
    /// `kill -9` one of a pod's app worker processes.
    KillWorker { pod: u8 },
    /// `kill -9` kube-apiserver and start it again.
    RestartApiserver,
    /// The artifact host refuses connections for `seconds`.
    ArtifactsDown { seconds: u8 },
    /// The artifact host answers `delay_ms` late for `seconds`.
    ArtifactsSlow { seconds: u8, delay_ms: u16 },
    /// Delete a pod (its ReplicaSet makes a new one).
    DeletePod { pod: u8 },
    /// Scale the Deployment to `replicas`.
    Scale { replicas: u8 },
    /// The OCI registry's process is killed, and started again after `seconds` on the same
    /// port and storage.
    RegistryDown { seconds: u8 },
    /// The OCI registry answers `delay_ms` late (each connection and each request) for
    /// `seconds`.
    RegistrySlow { seconds: u8, delay_ms: u16 },
    /// The operator leader's pod loses the API server (its packets to it are dropped) for
    /// `seconds`; everything else in the pod's network stays up.
    OperatorCutOff { seconds: u8 },
    /// A pod's `hotload` emptyDir (the sidecar's store) is filled up for `seconds`.
    EmptyDirFull { pod: u8, seconds: u8 },
}

/// Every fault kind, by [`Fault::kind`].
pub const FAULT_KINDS: [&str; 13] = [
    "kill-leader",
    "kill-standby",
    "kill-sidecar",
    "kill-worker",
    "restart-apiserver",
    "artifacts-down",
    "artifacts-slow",
    "delete-pod",
    "scale",
    "registry-down",
    "registry-slow",
    "operator-cut-off",
    "emptydir-full",
];

impl Fault {
    /// The fault's kind, for counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::KillStandby => "kill-standby",
            Fault::KillSidecar { .. } => "kill-sidecar",
            Fault::KillWorker { .. } => "kill-worker",
            Fault::RestartApiserver => "restart-apiserver",
            Fault::ArtifactsDown { .. } => "artifacts-down",
            Fault::ArtifactsSlow { .. } => "artifacts-slow",
            Fault::DeletePod { .. } => "delete-pod",
            Fault::Scale { .. } => "scale",
            Fault::RegistryDown { .. } => "registry-down",
            Fault::RegistrySlow { .. } => "registry-slow",
            Fault::OperatorCutOff { .. } => "operator-cut-off",
            Fault::EmptyDirFull { .. } => "emptydir-full",
        }
    }

    /// A fault of the kinds the second stream decides.
    fn random_later(rng: &mut Rng) -> Self {
        let pod = rng.range(0, 255) as u8;
        let seconds = rng.range(2, u64::from(MAX_OUTAGE_SECONDS)) as u8;
        match rng.range(0, 3) {
            0 => Fault::RegistryDown { seconds },
            1 => Fault::RegistrySlow {
                seconds,
                delay_ms: rng.range(500, 3_000) as u16,
            },
            2 => Fault::OperatorCutOff {
                seconds: rng.range(u64::from(CUT_OFF_SECONDS.0), u64::from(CUT_OFF_SECONDS.1))
                    as u8,
            },
            _ => Fault::EmptyDirFull {
                pod,
                seconds: rng.range(u64::from(FULL_SECONDS.0), u64::from(FULL_SECONDS.1)) as u8,
            },
        }
    }

    /// How long the fault lasts before the harness ends it (None: it is over at once).
    pub fn lasts(&self) -> Option<Duration> {
        let seconds = match self {
            Fault::ArtifactsDown { seconds }
            | Fault::ArtifactsSlow { seconds, .. }
            | Fault::RegistryDown { seconds }
            | Fault::RegistrySlow { seconds, .. }
            | Fault::OperatorCutOff { seconds }
            | Fault::EmptyDirFull { seconds, .. } => *seconds,
            _ => return None,
        };
        Some(Duration::from_secs(u64::from(seconds)))
    }

    fn random(rng: &mut Rng) -> Self {
        let pod = rng.range(0, 255) as u8;
        let seconds = rng.range(2, u64::from(MAX_OUTAGE_SECONDS)) as u8;
        match rng.range(0, 8) {
            0 => Fault::KillLeader,
            1 => Fault::KillStandby,
            2 => Fault::KillSidecar { pod },
            3 => Fault::KillWorker { pod },
            4 => Fault::RestartApiserver,
            5 => Fault::ArtifactsDown { seconds },
            6 => Fault::ArtifactsSlow {
                seconds,
                delay_ms: rng.range(500, 3_000) as u16,
            },
            7 => Fault::DeletePod { pod },
            _ => Fault::Scale {
                replicas: rng.range(u64::from(SCALE_RANGE.0), u64::from(SCALE_RANGE.1)) as u8,
            },
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillLeader => write!(f, "kill -9 the operator leader"),
            Fault::KillStandby => write!(f, "kill -9 an operator standby"),
            Fault::KillSidecar { pod } => write!(f, "kill -9 the sidecar of pod #{pod}"),
            Fault::KillWorker { pod } => write!(f, "kill -9 an app worker of pod #{pod}"),
            Fault::RestartApiserver => write!(f, "restart kube-apiserver (kill -9)"),
            Fault::ArtifactsDown { seconds } => write!(f, "artifact host down for {seconds}s"),
            Fault::ArtifactsSlow { seconds, delay_ms } => {
                write!(f, "artifact host {delay_ms} ms slow for {seconds}s")
            }
            Fault::DeletePod { pod } => write!(f, "delete pod #{pod}"),
            Fault::Scale { replicas } => write!(f, "scale to {replicas}"),
            Fault::RegistryDown { seconds } => write!(f, "OCI registry down for {seconds}s"),
            Fault::RegistrySlow { seconds, delay_ms } => {
                write!(f, "OCI registry {delay_ms} ms slow for {seconds}s")
            }
            Fault::OperatorCutOff { seconds } => {
                write!(
                    f,
                    "operator leader cut off from the API server for {seconds}s"
                )
            }
            Fault::EmptyDirFull { pod, seconds } => {
                write!(f, "emptyDir of pod #{pod} full for {seconds}s")
            }
        }
    }
}

/// Where a step's release fetches its artifact from (for actions that apply one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The HTTPS artifact server.
    Https,
    /// The OCI registry, digest-pinned, with a pull secret.
    Oci,
}

/// One step: an action, then perhaps a fault `fault_after` later, then a pause of `gap`
/// (measured from the action) before the next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// What is asked of the release.
    pub action: Action,
    /// What breaks meanwhile, if anything.
    pub fault: Option<Fault>,
    /// When the fault lands, after the action.
    pub fault_after: Duration,
    /// How long after the action the next step starts (at least `fault_after`).
    pub gap: Duration,
    /// Where the action's artifact comes from (good, broken and canary actions; a signed
    /// revision always comes over HTTPS, a revert as it came before).
    pub delivery: Delivery,
}

impl Step {
    /// Whether the step's action fetches its artifact from the OCI registry.
    pub fn over_oci(&self) -> bool {
        self.delivery == Delivery::Oci
            && matches!(
                self.action,
                Action::Good { .. } | Action::Broken { .. } | Action::Canary { .. }
            )
    }
}

/// A whole run, decided by its seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The seed it came from.
    pub seed: u64,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// The plan of the run with `seed`.
pub fn plan(seed: u64) -> Plan {
    let mut rng = Rng::new(seed);
    let mut later = Rng::new(seed ^ EXTENSION_SALT);
    let count = rng.range(MIN_STEPS as u64, MAX_STEPS as u64) as usize;
    let steps = (0..count)
        .map(|_| {
            let action = Action::random(&mut rng);
            let fault = rng.chance(75).then(|| Fault::random(&mut rng));
            let gap_ms = rng.range(300, MAX_GAP.as_millis() as u64);
            let fault_after_ms = rng.range(0, gap_ms);
            // Drawn for every step, so the second stream stays aligned with the first.
            let delivery = if later.chance(50) {
                Delivery::Oci
            } else {
                Delivery::Https
            };
            let later_fault = Fault::random_later(&mut later);
            Step {
                action,
                fault: fault.or(Some(later_fault)),
                fault_after: Duration::from_millis(fault_after_ms),
                gap: Duration::from_millis(gap_ms),
                delivery,
            }
        })
        .collect();
    Plan { seed, steps }
}

/// The seed of run `index` (from 0) of a session started at `base`: consecutive, so run
/// `i` is replayed alone with `--runs 1 --seed <base + i>`.
pub fn run_seed(base: u64, index: u32) -> u64 {
    base.wrapping_add(u64::from(index))
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "plan of seed {} ({} steps):",
            self.seed,
            self.steps.len()
        )?;
        for (i, step) in self.steps.iter().enumerate() {
            write!(f, "  {}. {}", i + 1, step.action)?;
            if step.over_oci() {
                write!(f, " over OCI")?;
            }
            if let Some(fault) = &step.fault {
                write!(f, "; +{:.1}s {fault}", step.fault_after.as_secs_f32())?;
            }
            writeln!(f, "; next step at +{:.1}s", step.gap.as_secs_f32())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_plan_and_others_differ() {
        for seed in [0, 1, 42, u64::MAX] {
            assert_eq!(plan(seed), plan(seed));
        }
        let distinct: BTreeSet<String> = (0..50).map(|s| format!("{:?}", plan(s).steps)).collect();
        assert!(
            distinct.len() >= 49,
            "{} distinct plans of 50",
            distinct.len()
        );
    }

    #[test]
    fn a_known_seed_keeps_its_plan_so_recorded_seeds_replay() {
        // docs/reliability.md names seeds; their plans must not change under them.
        let first = plan(1);
        assert_eq!(first, plan(1));
        let text = first.to_string();
        assert!(text.starts_with("plan of seed 1 ("), "{text}");
        let mut rng = Rng::new(1);
        assert_eq!(rng.next_u64(), 0x910a_2dec_8902_5cc1);
    }

    #[test]
    fn every_action_and_fault_kind_is_reachable_within_a_few_seeds() {
        let mut actions = BTreeSet::new();
        let mut faults = BTreeSet::new();
        for seed in 1..=100 {
            for step in plan(seed).steps {
                actions.insert(step.action.kind());
                if let Some(fault) = step.fault {
                    faults.insert(fault.kind());
                }
            }
        }
        assert_eq!(actions, ACTION_KINDS.into_iter().collect());
        assert_eq!(faults, FAULT_KINDS.into_iter().collect());
    }

    #[test]
    fn later_faults_fill_only_steps_the_first_stream_left_without_one() {
        // What a seed recorded before the second stream decided stays as it was: the same
        // actions and timing, and the same faults where it had one.
        // The kinds the first stream draws: the first nine.
        let first_kinds = &FAULT_KINDS[..9];
        let mut oci = 0;
        for seed in 0..500 {
            let mut rng = Rng::new(seed);
            let count = rng.range(MIN_STEPS as u64, MAX_STEPS as u64) as usize;
            let plan = plan(seed);
            assert_eq!(plan.steps.len(), count);
            for step in &plan.steps {
                assert_eq!(step.action, Action::random(&mut rng), "seed {seed}");
                let first = rng.chance(75).then(|| Fault::random(&mut rng));
                let gap = rng.range(300, MAX_GAP.as_millis() as u64);
                assert_eq!(step.gap, Duration::from_millis(gap));
                assert_eq!(step.fault_after, Duration::from_millis(rng.range(0, gap)));
                let fault = step.fault.as_ref().expect("every step has a fault");
                match first {
                    Some(first) => assert_eq!(fault, &first, "seed {seed}"),
                    None => assert!(!first_kinds.contains(&fault.kind()), "seed {seed}"),
                }
                oci += usize::from(step.over_oci());
            }
        }
        assert!(oci > 200, "{oci} steps over OCI");
    }

    #[test]
    fn lengths_timings_and_sizes_stay_within_their_bounds() {
        for seed in 0..2_000 {
            let plan = plan(seed);
            assert!(
                (MIN_STEPS..=MAX_STEPS).contains(&plan.steps.len()),
                "seed {seed}"
            );
            for step in &plan.steps {
                assert!(step.fault_after <= step.gap && step.gap <= MAX_GAP);
                match &step.action {
                    Action::Good {
                        version,
                        max_unavailable,
                        min_ready_seconds,
                    } => {
                        assert!((1..=2).contains(version));
                        assert!((1..=2).contains(max_unavailable));
                        assert!(*min_ready_seconds <= 2);
                    }
                    Action::Signed { version } => assert!((1..=2).contains(version)),
                    Action::Canary {
                        percent,
                        pause_seconds,
                        ..
                    } => {
                        assert!([25, 50].contains(percent));
                        assert!((1..=4).contains(pause_seconds));
                    }
                    _ => {}
                }
                match step.fault {
                    Some(Fault::ArtifactsDown { seconds }) => {
                        assert!((2..=MAX_OUTAGE_SECONDS).contains(&seconds))
                    }
                    Some(Fault::ArtifactsSlow { seconds, delay_ms }) => {
                        assert!((2..=MAX_OUTAGE_SECONDS).contains(&seconds));
                        assert!((500..=3_000).contains(&delay_ms));
                    }
                    Some(Fault::Scale { replicas }) => {
                        assert!((SCALE_RANGE.0..=SCALE_RANGE.1).contains(&replicas))
                    }
                    Some(Fault::RegistryDown { seconds }) => {
                        assert!((2..=MAX_OUTAGE_SECONDS).contains(&seconds))
                    }
                    Some(Fault::RegistrySlow { seconds, delay_ms }) => {
                        assert!((2..=MAX_OUTAGE_SECONDS).contains(&seconds));
                        assert!((500..=3_000).contains(&delay_ms));
                    }
                    Some(Fault::OperatorCutOff { seconds }) => {
                        assert!((CUT_OFF_SECONDS.0..=CUT_OFF_SECONDS.1).contains(&seconds))
                    }
                    Some(Fault::EmptyDirFull { seconds, .. }) => {
                        assert!((FULL_SECONDS.0..=FULL_SECONDS.1).contains(&seconds))
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn run_seeds_are_consecutive_and_never_overflow() {
        assert_eq!(run_seed(1, 0), 1);
        assert_eq!(run_seed(1, 99), 100);
        assert_eq!(run_seed(u64::MAX, 1), 0);
    }

    #[test]
    fn the_generator_stays_in_range_and_picks_from_what_it_is_given() {
        let mut rng = Rng::new(7);
        for _ in 0..1_000 {
            assert!((3..=5).contains(&rng.range(3, 5)));
        }
        assert_eq!(rng.range(9, 2), 9);
        assert_eq!(rng.pick::<u8>(&[]), None);
        assert_eq!(rng.pick(&[4]), Some(&4));
    }
}
