//! `hotload-e2e chaos --runs N --seed S`: randomized chaos on the local cluster.
//!
//! One fleet serves every run: the chart with two operator replicas (a leader and a
//! standby), a Deployment of demo-app pods with two pre-forked workers each, their sidecars
//! injected (their store a 32 MiB emptyDir), the HTTPS artifact server and an OCI registry
//! ([`crate::registry`]) with a pull secret. Each run, decided by its seed ([`plan`]):
//!
//! ```text
//! baseline (4 pods, v1, settled) ─► traffic on ─► steps: action, fault, pause ─► outages end
//!   ─► converge (bounded after the last fault) ─► invariants ─► report (seed, plan, log)
//! ```
//!
//! The invariants ([`invariants`]): every pod serves exactly what status says it loaded; no
//! pod serves a revision outside status.history; a rollback has finished; no request failed
//! on a pod no fault touched, and no answer mixed two versions; the release settled and the
//! pods matched it within the bound. A run that breaks one prints its seed, plan and log;
//! `--runs 1 --seed S` replays its plan (timing on a busy machine varies).

pub mod faults;
pub mod invariants;
pub mod plan;
pub mod traffic;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::artifacts::digest_of;
use crate::fleet::{Artifact, Demo, RELEASE};
use crate::layout::Layout;
use crate::registry::Registry;
use crate::testing::{self, TestNamespace, eventually};
use crate::workload::{deployment, tag_of, tagger, tagger_failing_self_check};
use invariants::{PodAnswers, Violation};
use plan::{Action, BASE_PODS, Plan, Step};

/// Operator replicas in the fleet: a leader and a standby.
pub const OPERATOR_REPLICAS: usize = 2;
/// App worker processes per demo pod.
pub const WORKERS: u16 = 2;
/// Probes per pod when checking what it serves (new connection each, spread over workers).
const PROBES: usize = 8;
/// How long an API call may keep failing (an API server restart) before the run gives up.
const API_PATIENCE: Duration = Duration::from_secs(60);
/// The size of the demo pods' store emptyDir (the node agent mounts a tmpfs that size).
pub const STORE_SIZE_LIMIT: &str = "32Mi";
/// The Secret with the registry's pull credentials that OCI releases name.
const PULL_SECRET: &str = "chaos-registry";
/// The registry repository the plugins are pushed to.
const REPOSITORY: &str = "chaos/tagger";

/// Options of `hotload-e2e chaos`.
#[derive(clap::Args, Debug, Clone)]
pub struct ChaosArgs {
    /// How many runs (seeds `seed`, `seed+1`, …).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub runs: u32,
    /// The first run's seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seconds after the last fault within which the release must settle and every pod
    /// match it.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(10..=600))]
    pub converge_seconds: u64,
    /// Keep the namespace (`hotload-chaos`) and its fleet afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// The artifacts a run draws from.
pub struct Artifacts {
    good: [Artifact; 2],
    signed: [Artifact; 2],
    broken: Artifact,
    /// The same plugins in the OCI registry: v1, v2, broken.
    oci_good: [Artifact; 2],
    oci_broken: Artifact,
}

/// The fleet the runs act on.
pub struct Fleet {
    /// The demo fleet (namespace, chart, artifact server, Deployment).
    pub demo: Demo,
    /// The OCI registry some releases pull from.
    pub registry: Registry,
    key: signing::CosignKey,
    /// Tagger v1: plain, signed, and in the registry.
    v1: [Artifact; 3],
    layout: Layout,
}

impl Fleet {
    /// Starts the OCI registry, installs the chart (two operator replicas) and starts the
    /// demo pods in `ns` (trusting the registry's CA, with its pull secret); publishes tagger
    /// v1 plain and signed on the artifact server and in the registry. Each run publishes
    /// its own v2 and broken revision ([`Fleet::artifacts_for`]).
    pub async fn start(e2e_bin: &str, ns: &TestNamespace) -> Result<Self> {
        let registry = Registry::start().await?;
        let mut app = deployment(i32::from(BASE_PODS))?;
        let container = app
            .spec
            .template
            .spec
            .as_mut()
            .and_then(|s| s.containers.first_mut())
            .context("the demo Deployment has no container")?;
        container.args = Some(vec![
            "--listen=0.0.0.0:8080".into(),
            format!("--workers={WORKERS}"),
        ]);
        // The pod brings the store volume the webhook would add, with a size limit, so a
        // full emptyDir is a few MiB of memory.
        if let Some(spec) = app.spec.template.spec.as_mut() {
            spec.volumes = Some(vec![serde_json::from_value(json!({
                "name": "hotload", "emptyDir": {"sizeLimit": STORE_SIZE_LIMIT}}))?]);
        }
        let replicas = format!("replicaCount={OPERATOR_REPLICAS}");
        let demo =
            Demo::start_trusting(e2e_bin, ns, app, &[&replicas], Some(&registry.ca_pem)).await?;
        ns.api::<k8s_openapi::api::core::v1::Secret>()
            .create(&Default::default(), &registry.pull_secret(PULL_SECRET)?)
            .await?;
        let key = signing::CosignKey::generate()?;
        let v1 = tagger(1)?;
        let good = demo.publish("tagger-v1.wasm", &v1);
        let signed = publish_signed(&demo, &key, "tagger-v1-signed.wasm", &v1)?;
        let oci = push(&registry, "v1", &v1).await?;
        Ok(Self {
            demo,
            registry,
            key,
            v1: [good, signed, oci],
            layout: Layout::from_env(),
        })
    }

    /// The artifacts of the run of `seed`: v1 as every run has it (the baseline, cached in
    /// every pod), and v2 and the broken revision marked with the seed (a custom section),
    /// so each run's rollouts download, and a full emptyDir bites.
    pub async fn artifacts_for(&self, seed: u64) -> Result<Artifacts> {
        let v2 = marked(tagger(2)?, seed);
        let broken = marked(tagger_failing_self_check()?, seed);
        let [good_v1, signed_v1, oci_v1] = self.v1.clone();
        Ok(Artifacts {
            good: [
                good_v1,
                self.demo.publish(&format!("tagger-v2-s{seed}.wasm"), &v2),
            ],
            signed: [
                signed_v1,
                publish_signed(
                    &self.demo,
                    &self.key,
                    &format!("tagger-v2-s{seed}-signed.wasm"),
                    &v2,
                )?,
            ],
            broken: self
                .demo
                .publish(&format!("tagger-broken-s{seed}.wasm"), &broken),
            oci_good: [
                oci_v1,
                push(&self.registry, &format!("v2-s{seed}"), &v2).await?,
            ],
            oci_broken: push(&self.registry, &format!("broken-s{seed}"), &broken).await?,
        })
    }
}

/// Publishes `bytes` as `file` with a cosign signature (`file.sig`) the release requires.
fn publish_signed(
    demo: &Demo,
    key: &signing::CosignKey,
    file: &str,
    bytes: &[u8],
) -> Result<Artifact> {
    let mut artifact = demo.publish(file, bytes);
    demo.publish(&format!("{file}.sig"), key.sign(bytes)?.as_bytes());
    artifact.signature_key = Some(key.public_pem.clone());
    Ok(artifact)
}

/// Pushes `bytes` to the registry as `REPOSITORY:tag`; the artifact names it by digest.
async fn push(registry: &Registry, tag: &str, bytes: &[u8]) -> Result<Artifact> {
    let manifest = registry.push(REPOSITORY, tag, bytes).await?;
    Ok(Artifact {
        file: format!("{REPOSITORY}:{tag} (OCI)"),
        url: registry.url(REPOSITORY, &manifest),
        digest: digest_of(bytes),
        signature_key: None,
    })
}

/// `module` with a custom section naming the run of `seed` (engines ignore it; the digest
/// is the run's own).
fn marked(mut module: Vec<u8>, seed: u64) -> Vec<u8> {
    const NAME: &[u8] = b"hotload-chaos-run";
    // Both lengths are below 128, so each is one byte of LEB128.
    let size = 1 + NAME.len() + 8;
    module.extend([0, size as u8, NAME.len() as u8]);
    module.extend_from_slice(NAME);
    module.extend_from_slice(&seed.to_le_bytes());
    module
}

impl Artifacts {
    fn good(&self, version: u8) -> &Artifact {
        &self.good[usize::from(version.clamp(1, 2) - 1)]
    }

    fn oci_good(&self, version: u8) -> &Artifact {
        &self.oci_good[usize::from(version.clamp(1, 2) - 1)]
    }

    fn signed(&self, version: u8) -> &Artifact {
        &self.signed[usize::from(version.clamp(1, 2) - 1)]
    }
}

/// One spec as applied: the artifact, the pull secret it names, and the rest of the spec.
#[derive(Clone)]
struct Applied {
    artifact: Artifact,
    pull_secret: Option<&'static str>,
    extra: Value,
}

/// What one run did and found.
#[derive(Debug)]
pub struct RunReport {
    /// The run's seed.
    pub seed: u64,
    /// The plan it followed.
    pub plan: Plan,
    /// Timestamped lines: actions, faults, convergence.
    pub log: Vec<String>,
    /// What did not hold.
    pub violations: Vec<Violation>,
    /// Faults injected, by kind (planned faults that could not apply are not counted).
    pub faults: BTreeMap<&'static str, usize>,
    /// Actions taken, by kind.
    pub actions: BTreeMap<&'static str, usize>,
    /// Seconds from the end of the last fault until the release settled with every pod
    /// matching it (None: it did not, within the bound).
    pub converged_after: Option<f32>,
    /// Whole answers of the traffic.
    pub requests_ok: usize,
    /// Failed requests on faulted pods (excused).
    pub requests_failed_faulted: usize,
    /// The run's wall time, seconds.
    pub seconds: f32,
}

impl RunReport {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The one-line summary of a run.
    pub fn line(&self) -> String {
        let faults: Vec<&str> = self.faults.keys().copied().collect();
        let converged = self
            .converged_after
            .map_or("did not converge".to_string(), |s| {
                format!("converged {s:.1}s after the last fault")
            });
        format!(
            "seed {}: {} in {:.0}s ({} steps; faults {faults:?}; {converged}; {} requests ok, {} failed on faulted pods)",
            self.seed,
            if self.passed() { "ok" } else { "FAILED" },
            self.seconds,
            self.plan.steps.len(),
            self.requests_ok,
            self.requests_failed_faulted,
        )
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.line())?;
        if !self.passed() {
            write!(f, "{}", self.plan)?;
            writeln!(f, "log:")?;
            for line in &self.log {
                writeln!(f, "  {line}")?;
            }
            writeln!(f, "violations:")?;
            for violation in &self.violations {
                writeln!(f, "  - {violation}")?;
            }
            writeln!(f, "replay: hotload-e2e chaos --runs 1 --seed {}", self.seed)?;
        }
        Ok(())
    }
}

/// A run's log: lines stamped with seconds since the run began, echoed to stderr.
struct Log {
    started: Instant,
    lines: Vec<String>,
}

impl Log {
    fn line(&mut self, text: impl fmt::Display) {
        let line = format!("+{:6.2}s {text}", self.started.elapsed().as_secs_f32());
        eprintln!("chaos: {line}");
        self.lines.push(line);
    }
}

/// Retries an API call while it fails (an API server restart), at most [`API_PATIENCE`].
async fn patiently<T, F, Fut>(what: &str, call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    eventually(what, API_PATIENCE, call).await
}

/// The release's generation and status.
async fn release(demo: &Demo) -> Result<(i64, Value)> {
    let object = testing::plugin_releases(&demo.ns).get(RELEASE).await?;
    Ok((
        object.metadata.generation.unwrap_or_default(),
        object.data["status"].clone(),
    ))
}

/// What each Ready demo pod answers: [`PROBES`] requests each, on new connections.
async fn probe(demo: &Demo) -> Result<Vec<PodAnswers>> {
    let mut out = Vec::new();
    for (pod, ip) in demo.ready_pods_now().await? {
        let mut answers = PodAnswers {
            pod,
            ..Default::default()
        };
        for i in 0..PROBES {
            match probe_once(&ip, i).await {
                Ok(revision) => {
                    answers.revisions.insert(revision);
                }
                Err(e) => answers.errors.push(format!("{e:#}")),
            }
        }
        out.push(answers);
    }
    Ok(out)
}

/// One request; the answer's `x-hotload-revision` (`""` when it has none).
async fn probe_once(ip: &str, i: usize) -> Result<String> {
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()?
        .post(format!("http://{ip}:8080/"))
        .body(format!("probe-{i}"))
        .send()
        .await?;
    let revision = response
        .headers()
        .get("x-hotload-revision")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let status = response.status();
    let body = response.text().await?;
    ensure!(status.is_success(), "{status}: {body}");
    ensure!(tag_of(&body).is_some(), "mixed answer {body:?}");
    Ok(revision)
}

/// One look at whether the fleet has converged: the state invariants, plus the release
/// settled, the Deployment's pods all Ready, and status listing no pod that is gone.
async fn convergence(demo: &Demo) -> Result<(Vec<Violation>, Value)> {
    let (generation, status) = release(demo).await?;
    let mut violations = Vec::new();
    if !invariants::settled(&status, generation) {
        violations.push(Violation::NotConverged {
            seconds: 0,
            why: format!(
                "release not settled: generation {generation}, observed {}, phase {}, message {}",
                status["observedGeneration"], status["phase"], status["message"]
            ),
        });
    }
    let desired = faults::desired(demo).await?;
    let answers = probe(demo).await?;
    if answers.len() != desired {
        violations.push(Violation::NotConverged {
            seconds: 0,
            why: format!("{} of {desired} pods Ready", answers.len()),
        });
    }
    let present: BTreeSet<String> = faults::demo_pods(demo)
        .await?
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    for pod in status["pods"].as_array().into_iter().flatten() {
        let name = pod["pod"].as_str().unwrap_or_default();
        if !present.contains(name) {
            violations.push(Violation::NotConverged {
                seconds: 0,
                why: format!("status lists pod {name}, which is gone"),
            });
        }
    }
    violations.extend(invariants::state_violations(&status, &answers));
    Ok((violations, status))
}

/// Waits until the fleet has converged, at most `bound`; the violations left otherwise.
async fn converge(demo: &Demo, bound: Duration) -> (Option<Duration>, Vec<Violation>) {
    let started = Instant::now();
    loop {
        let last = match convergence(demo).await {
            Ok((violations, _)) if violations.is_empty() => {
                return (Some(started.elapsed()), Vec::new());
            }
            Ok((mut violations, status)) => {
                if started.elapsed() > bound {
                    violations.push(Violation::NotConverged {
                        seconds: bound.as_secs(),
                        why: format!("status at the end: {status}"),
                    });
                }
                violations
            }
            Err(e) => vec![Violation::NotConverged {
                seconds: bound.as_secs(),
                why: format!("could not read the fleet: {e:#}"),
            }],
        };
        if started.elapsed() > bound {
            return (None, last);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The spec's strategy and policy for `step`'s action, and the artifact it names (from the
/// registry when the step delivers over OCI).
fn spec_for(artifacts: &Artifacts, step: &Step) -> Option<Applied> {
    let oci = step.over_oci();
    let good = |version: u8| {
        if oci {
            artifacts.oci_good(version)
        } else {
            artifacts.good(version)
        }
    };
    let (artifact, extra) = match &step.action {
        Action::Good {
            version,
            max_unavailable,
            min_ready_seconds,
        } => (
            good(*version),
            json!({"strategy": {"maxUnavailable": max_unavailable,
                                "minReadySeconds": min_ready_seconds}}),
        ),
        Action::Broken { max_unavailable } => (
            if oci {
                &artifacts.oci_broken
            } else {
                &artifacts.broken
            },
            json!({"strategy": {"maxUnavailable": max_unavailable}}),
        ),
        Action::Signed { version } => (
            artifacts.signed(*version),
            json!({"strategy": {"maxUnavailable": 1}}),
        ),
        Action::Canary {
            version,
            percent,
            pause_seconds,
        } => (
            good(*version),
            json!({"strategy": {"maxUnavailable": 1, "steps": [
                {"percent": percent, "pause": {"duration": format!("{pause_seconds}s")}}]}}),
        ),
        Action::Abort | Action::Retry | Action::Revert => return None,
    };
    Some(Applied {
        artifact: artifact.clone(),
        pull_secret: oci.then_some(PULL_SECRET),
        extra,
    })
}

/// The baseline every run starts from: v1 everywhere, all at once.
fn baseline(fleet: &Fleet) -> Applied {
    Applied {
        artifact: fleet.v1[0].clone(),
        pull_secret: None,
        extra: json!({"strategy": {"maxUnavailable": "100%"}}),
    }
}

/// Applies `spec` (server-side apply, as GitOps does), through API server restarts.
async fn apply(demo: &Demo, spec: &Applied) -> Result<i64> {
    patiently("applying the release", || {
        demo.apply_pulling(&spec.artifact, spec.pull_secret, spec.extra.clone())
    })
    .await
}

/// `kubectl hotload <verb>`; a refusal for the phase (nothing to abort or retry) is logged,
/// not an error.
async fn cli(fleet: &Fleet, verb: &str, log: &mut Log) -> Result<()> {
    let refused = ["has no rollout under way", "has nothing to retry"];
    let result = patiently(&format!("kubectl hotload {verb}"), || async {
        match fleet.demo.cli(verb, &[]) {
            Ok(out) => Ok(Ok(out)),
            Err(e) if refused.iter().any(|r| format!("{e:#}").contains(r)) => Ok(Err(e)),
            Err(e) => Err(e),
        }
    })
    .await?;
    match result {
        Ok(out) => log.line(format_args!("kubectl hotload {verb}: {}", out.trim())),
        // The reason is the first line; a backtrace (RUST_BACKTRACE) may follow.
        Err(e) => log.line(format_args!(
            "kubectl hotload {verb}: refused: {}",
            format!("{e:#}").lines().next().unwrap_or_default()
        )),
    }
    Ok(())
}

/// A fault under way: when it ends, what it is, and how it is undone.
struct Outage {
    end: Instant,
    what: String,
    restore: faults::Restore,
}

/// Faults under way.
type Outages = Vec<Outage>;

/// Ends the outages due by `now` (all when `now` is None). Ending one restores its target
/// entirely (a host comes back whole), so overlapping outages of a target end with the
/// first.
async fn end_outages(
    fleet: &Fleet,
    outages: &mut Outages,
    log: &mut Log,
    now: Option<Instant>,
) -> Result<()> {
    let due: BTreeSet<String> = outages
        .iter()
        .filter(|o| now.is_none_or(|now| o.end <= now))
        .map(|o| o.restore.target())
        .collect();
    let (ending, left): (Vec<Outage>, Vec<Outage>) = std::mem::take(outages)
        .into_iter()
        .partition(|o| due.contains(&o.restore.target()));
    *outages = left;
    let mut restored = BTreeSet::new();
    let mut failed = None;
    for outage in ending {
        if restored.insert(outage.restore.target()) {
            match faults::restore(&fleet.demo, &fleet.registry, &outage.restore).await {
                Ok(done) => log.line(format_args!("ended: {} ({done})", outage.what)),
                Err(e) => {
                    log.line(format_args!("could not end: {}: {e:#}", outage.what));
                    failed.get_or_insert(e);
                }
            }
        } else {
            log.line(format_args!("ended: {}", outage.what));
        }
    }
    failed.map_or(Ok(()), Err)
}

/// Sleeps until `deadline`, pointing the traffic at the pods Ready meanwhile and ending
/// outages as they fall due (each second at least).
async fn sleep_until(
    fleet: &Fleet,
    traffic: &traffic::Traffic,
    outages: &mut Outages,
    log: &mut Log,
    deadline: Instant,
) -> Result<()> {
    loop {
        let now = Instant::now();
        if outages.iter().any(|o| o.end <= now) {
            end_outages(fleet, outages, log, Some(now)).await?;
        }
        if let Ok(ready) = fleet.demo.ready_pods_now().await
            && !ready.is_empty()
        {
            traffic.retarget(ready);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        let next = outages
            .iter()
            .map(|o| o.end)
            .chain([deadline, now + Duration::from_secs(1)])
            .min()
            .unwrap_or(deadline);
        tokio::time::sleep(next.saturating_duration_since(now)).await;
    }
}

/// Deletes the release and waits until it is gone (bounded).
async fn recreate(demo: &Demo) -> Result<()> {
    let releases = testing::plugin_releases(&demo.ns);
    patiently("deleting the release", || async {
        match releases.delete(RELEASE, &Default::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    eventually("the release to be gone", API_PATIENCE, || async {
        ensure!(releases.get_opt(RELEASE).await?.is_none(), "still there");
        Ok(())
    })
    .await
}

/// Brings the fleet to the baseline: the artifact host and the registry up and fast, 4
/// pods, v1 settled (the release made afresh if it cannot settle).
async fn reset(fleet: &Fleet, log: &mut Log) -> Result<()> {
    let demo = &fleet.demo;
    faults::restore_artifacts(demo).await?;
    faults::restore_registry(&fleet.registry).await?;
    patiently("scaling to the baseline", || {
        faults::scale(demo, i32::from(BASE_PODS))
    })
    .await?;
    let replaced = faults::operators_up(demo, OPERATOR_REPLICAS, Duration::from_secs(120)).await?;
    if !replaced.is_empty() {
        log.line(format_args!(
            "deleted operator pods in crash-loop back-off (from earlier kills): {replaced:?}"
        ));
    }
    apply(demo, &baseline(fleet)).await?;
    let (mut after, mut violations) = converge(demo, Duration::from_secs(60)).await;
    if after.is_none() {
        // A release an earlier run left stuck (that run reported it) must not fail every
        // run after it: start the release afresh, as a person would.
        log.line(format_args!(
            "the baseline did not settle ({}); deleting and re-creating the release",
            violations
                .first()
                .map(ToString::to_string)
                .unwrap_or_default()
        ));
        recreate(demo).await?;
        apply(demo, &baseline(fleet)).await?;
        (after, violations) = converge(demo, Duration::from_secs(120)).await;
    }
    ensure!(
        after.is_some(),
        "the baseline (v1 on {BASE_PODS} pods) did not settle: {}",
        violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    );
    log.line(format_args!(
        "baseline: v1 on {BASE_PODS} pods, settled in {:.1}s",
        after.unwrap_or_default().as_secs_f32()
    ));
    Ok(())
}

/// Runs the plan of `seed` on `fleet` and checks the invariants. An `Err` is the harness
/// failing to act (not a finding); violations are in the report.
pub async fn run_one(fleet: &Fleet, seed: u64, converge_bound: Duration) -> Result<RunReport> {
    let plan = plan::plan(seed);
    let demo = &fleet.demo;
    let started = Instant::now();
    let mut log = Log {
        started,
        lines: Vec::new(),
    };
    log.line(format_args!("run of seed {seed}"));
    reset(fleet, &mut log).await?;
    let artifacts = fleet.artifacts_for(seed).await?;
    let traffic = traffic::Traffic::start(demo.ready_pods_now().await?, Instant::now());
    let mut applied = vec![baseline(fleet)];
    let mut faulted = BTreeSet::new();
    let mut fault_counts = BTreeMap::new();
    let mut action_counts = BTreeMap::new();
    let mut outages: Outages = Vec::new();
    let mut last_fault = Instant::now();
    let outcome: Result<()> = async {
        for (i, step) in plan.steps.iter().enumerate() {
            let at = Instant::now();
            log.line(format_args!(
                "step {}: {}{}",
                i + 1,
                step.action,
                if step.over_oci() { " over OCI" } else { "" }
            ));
            *action_counts.entry(step.action.kind()).or_insert(0) += 1;
            match &step.action {
                Action::Abort => cli(fleet, "abort", &mut log).await?,
                Action::Retry => cli(fleet, "retry", &mut log).await?,
                Action::Revert => match applied.len().checked_sub(2).map(|i| applied[i].clone()) {
                    Some(previous) => {
                        let generation = apply(demo, &previous).await?;
                        log.line(format_args!(
                            "reverted to {} {} (generation {generation})",
                            previous.artifact.file, previous.extra
                        ));
                        applied.push(previous);
                    }
                    None => log.line("nothing to revert"),
                },
                _ => {
                    let spec = spec_for(&artifacts, step).context("an apply action")?;
                    let generation = apply(demo, &spec).await?;
                    log.line(format_args!(
                        "applied {} {} (generation {generation})",
                        spec.artifact.file, spec.extra
                    ));
                    applied.push(spec);
                }
            }
            if let Some(fault) = &step.fault {
                sleep_until(
                    fleet,
                    &traffic,
                    &mut outages,
                    &mut log,
                    at + step.fault_after,
                )
                .await?;
                let injected = faults::inject(&fleet.layout, demo, &fleet.registry, fault).await?;
                if injected.skipped {
                    log.line(format_args!("fault skipped: {}", injected.what));
                } else {
                    log.line(format_args!("fault: {}", injected.what));
                    *fault_counts.entry(fault.kind()).or_insert(0) += 1;
                }
                if let Some(pod) = injected.pod {
                    faulted.insert(pod);
                }
                if let Some((after, restore)) = injected.restore {
                    outages.push(Outage {
                        end: Instant::now() + after,
                        what: fault.to_string(),
                        restore,
                    });
                }
                last_fault = Instant::now();
            }
            sleep_until(fleet, &traffic, &mut outages, &mut log, at + step.gap).await?;
        }
        // Outages still under way end at their planned time.
        if let Some(end) = outages.iter().map(|o| o.end).max() {
            sleep_until(fleet, &traffic, &mut outages, &mut log, end).await?;
            last_fault = Instant::now();
        }
        Ok(())
    }
    .await;
    if outcome.is_err() {
        // Never leave a fault in place for the next run.
        let _ = end_outages(fleet, &mut outages, &mut log, None).await;
        let _ = faults::restore_artifacts(demo).await;
        let _ = faults::restore_registry(&fleet.registry).await;
    }
    let mut violations = Vec::new();
    let converged_after = match outcome {
        Ok(()) => {
            let bound = converge_bound.saturating_sub(last_fault.elapsed());
            let (after, left) = converge(demo, bound).await;
            violations.extend(left);
            after.map(|_| last_fault.elapsed().as_secs_f32())
        }
        Err(e) => {
            let _ = traffic.finish().await;
            return Err(e.context(format!(
                "chaos run of seed {seed} could not act; log:\n{}",
                log.lines.join("\n")
            )));
        }
    };
    let seen = traffic.finish().await?;
    // Pods the traffic reached that are gone now went away mid-run (deleted, scaled down).
    let now: BTreeSet<String> = faults::demo_pods(demo)
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    faulted.extend(seen.pods.difference(&now).cloned());
    violations.extend(invariants::traffic_violations(&seen.failed, &faulted));
    let excused = seen
        .failed
        .iter()
        .filter(|f| !f.mixed && faulted.contains(&f.pod))
        .count();
    log.line(format_args!(
        "checked: {} requests ok, {excused} failed on faulted pods {faulted:?}, {} violations",
        seen.ok,
        violations.len()
    ));
    Ok(RunReport {
        seed,
        plan,
        log: log.lines,
        violations,
        faults: fault_counts,
        actions: action_counts,
        converged_after,
        requests_ok: seen.ok,
        requests_failed_faulted: excused,
        seconds: started.elapsed().as_secs_f32(),
    })
}

/// Totals over a session of runs.
#[derive(Debug, Default)]
pub struct Summary {
    /// Runs done.
    pub runs: usize,
    /// Seeds whose run broke an invariant.
    pub failed: Vec<u64>,
    /// Seeds whose run could not act (harness or cluster trouble), with why.
    pub errors: Vec<(u64, String)>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, usize>,
    /// Actions taken, by kind.
    pub actions: BTreeMap<&'static str, usize>,
    /// The slowest convergence after a last fault, seconds.
    pub slowest_convergence: f32,
    /// Whole answers over all runs.
    pub requests_ok: usize,
    /// Failed requests on faulted pods over all runs.
    pub requests_failed_faulted: usize,
}

impl Summary {
    /// Adds one run's report.
    pub fn add(&mut self, report: &RunReport) {
        self.runs += 1;
        if !report.passed() {
            self.failed.push(report.seed);
        }
        for (kind, n) in &report.faults {
            *self.faults.entry(kind).or_insert(0) += n;
        }
        for (kind, n) in &report.actions {
            *self.actions.entry(kind).or_insert(0) += n;
        }
        if let Some(s) = report.converged_after {
            self.slowest_convergence = self.slowest_convergence.max(s);
        }
        self.requests_ok += report.requests_ok;
        self.requests_failed_faulted += report.requests_failed_faulted;
    }

    /// Whether every run acted and held every invariant.
    pub fn passed(&self) -> bool {
        self.failed.is_empty() && self.errors.is_empty()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "==== chaos: {} runs, {} passed, {} broke an invariant {:?}, {} could not act {:?} ====",
            self.runs,
            self.runs - self.failed.len() - self.errors.len(),
            self.failed.len(),
            self.failed,
            self.errors.len(),
            self.errors.iter().map(|(s, _)| s).collect::<Vec<_>>(),
        );
        let _ = writeln!(text, "actions: {:?}", self.actions);
        let _ = writeln!(
            text,
            "faults:  {:?} ({} in all)",
            self.faults,
            self.faults.values().sum::<usize>()
        );
        let _ = writeln!(
            text,
            "traffic: {} requests ok, {} failed on faulted pods; slowest convergence {:.1}s after the last fault",
            self.requests_ok, self.requests_failed_faulted, self.slowest_convergence
        );
        f.write_str(&text)
    }
}

/// `hotload-e2e chaos`: the fleet in namespace `hotload-chaos` of the running cluster
/// (started if none is), `args.runs` runs, a summary. The caller exits non-zero unless
/// [`Summary::passed`].
pub async fn main(layout: &Layout, e2e_bin: &str, args: &ChaosArgs) -> Result<Summary> {
    let kubeconfig = crate::cluster::up(layout, &crate::cluster::UpOptions::default()).await?;
    let client = crate::cluster::client_for(&kubeconfig).await?;
    let ns = testing::fresh_namespace(
        &client,
        &kubeconfig,
        "hotload-chaos",
        json!({"hotload.dev/e2e": "true"}),
    )
    .await?;
    let fleet = Fleet::start(e2e_bin, &ns).await?;
    let mut summary = Summary::default();
    let bound = Duration::from_secs(args.converge_seconds);
    for index in 0..args.runs {
        let seed = plan::run_seed(args.seed, index);
        eprintln!("chaos: run {}/{} (seed {seed})", index + 1, args.runs);
        match run_one(&fleet, seed, bound).await {
            Ok(report) => {
                summary.add(&report);
                println!("{report}");
            }
            Err(e) => {
                summary.runs += 1;
                println!("seed {seed}: COULD NOT ACT: {e:#}");
                summary.errors.push((seed, format!("{e:#}")));
            }
        }
    }
    println!("{summary}");
    if !summary.passed() {
        println!("{}", ns.dump().await);
    }
    if args.keep {
        // The namespace and its pods stay; the registry is a child process and must not
        // outlive this one (the kept release is the baseline, over HTTPS).
        let Fleet { demo, registry, .. } = fleet;
        drop(registry);
        std::mem::forget(demo);
    } else {
        drop(fleet);
        let _ =
            testing::delete_namespace_and_wait(&client, &ns.name, Duration::from_secs(120)).await;
    }
    Ok(summary)
}

/// Cosign-compatible signatures for the signed revisions.
mod signing {
    use anyhow::Result;

    /// An ECDSA P-256 key; signatures in ASN.1 DER, base64, as `cosign sign-blob` writes.
    pub struct CosignKey {
        pair: ring::signature::EcdsaKeyPair,
        /// The public key (PEM) a release names.
        pub public_pem: String,
    }

    impl CosignKey {
        /// A fresh key.
        pub fn generate() -> Result<Self> {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                &key.serialize_der(),
                &ring::rand::SystemRandom::new(),
            )
            .map_err(|e| anyhow::anyhow!("key: {e}"))?;
            Ok(Self {
                pair,
                public_pem: key.public_key_pem(),
            })
        }

        /// The base64 signature of `bytes`.
        pub fn sign(&self, bytes: &[u8]) -> Result<String> {
            use base64::Engine as _;
            let signature = self
                .pair
                .sign(&ring::rand::SystemRandom::new(), bytes)
                .map_err(|e| anyhow::anyhow!("sign: {e}"))?;
            Ok(base64::engine::general_purpose::STANDARD.encode(signature.as_ref()))
        }
    }
}
