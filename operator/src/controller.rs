//! The reconciler: the thin shell around [`planner::plan`]. It gathers the release's pods
//! (from a cache of the few fields it reads, [`CachedPod`], so 10,000 pods stay cheap), every
//! sidecar's report (from the [`Registry`]) and any competing release, runs the planner, and
//! carries the plan out ([`durable::carry_out`]): a plan that decides something (a rollback,
//! a new target, a step) is written to status with server-side apply before its
//! assignments go out, and sends nothing if the write fails; progress is written at most
//! once a second per release. Then it tells the registry which streams it has planned for
//! (for [`crate::synced`]) and records events once their status is written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio_stream::wrappers::BroadcastStream;

use crate::admin::Health;
use crate::api::{PluginRelease, PluginReleaseStatus, describe};
use crate::health::HealthStore;
use crate::measure::measure;
use crate::metrics::Metrics;
use crate::planner::{self, Input, Plan, PodView};
use crate::pods::{CachedPod, keep_what_is_read};
use crate::providers::Providers;
use crate::registry::{Directive, Registry};
use crate::views::{Source, planned_streams, pod_view};
use crate::{revision, selector, synced};

#[path = "durable.rs"]
pub(crate) mod durable;
use durable::{Effects, Memory};

/// The field manager of every status write.
pub const MANAGER: &str = "hotload-operator";
/// Releases are planned again at least this often (deadlines, reconnects, lost triggers).
const RESYNC: Duration = Duration::from_secs(60);

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing status failed.
    #[error("release {release}: writing status: {source}")]
    Status {
        /// `namespace/name`.
        release: String,
        /// The API error.
        source: kube::Error,
    },
    /// The release has no namespace (cannot happen for a namespaced kind).
    #[error("release {0} has no namespace")]
    NoNamespace(String),
    /// The spec is larger than a release may hand its pods; nothing is sent.
    #[error("release {release}: {reason}")]
    Oversized {
        /// `namespace/name`.
        release: String,
        /// Which field and how large.
        reason: String,
    },
}

impl Error {
    /// A low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Status { .. } => "status_write",
            Error::NoNamespace(_) => "no_namespace",
            Error::Oversized { .. } => "oversized",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    client: Client,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// How the plugins run, from the sidecars' reports (analysis).
    plugin_health: Arc<HealthStore>,
    /// Prometheus and webhook checks (analysis).
    providers: Providers,
    registry: Arc<Registry>,
    pods: Store<CachedPod>,
    releases: Store<PluginRelease>,
    recorder: Recorder,
    /// What each release's last plan left behind, by uid ([`Memory`]): progress writes are
    /// coalesced and the cache lags behind writes, so the next plan starts from here. Empty
    /// while this replica does not lead; a deleted release's entry goes with it.
    planned: Arc<Mutex<HashMap<String, Memory>>>,
}

impl Context {
    fn remembered(&self, uid: &str) -> Option<Memory> {
        self.planned.lock().ok()?.get(uid).cloned()
    }

    fn remember(&self, uid: String, memory: Memory) {
        if let Ok(mut planned) = self.planned.lock() {
            planned.insert(uid, memory);
        }
    }
}

/// Runs the controller until the process is asked to stop; with `namespace`, it watches
/// (and needs RBAC in) that namespace only.
pub async fn run(
    client: Client,
    registry: Arc<Registry>,
    namespace: Option<&str>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    plugin_health: Arc<HealthStore>,
) -> anyhow::Result<()> {
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let (pods, pod_writer) = reflector::store();
    let pod_events = reflector(
        pod_writer,
        watcher(
            api::<CachedPod>(&client, namespace),
            watcher::Config::default(),
        )
        .modify(keep_what_is_read),
    )
    .default_backoff()
    .inspect({
        let registry = registry.clone();
        move |event| {
            let named = |pod: &CachedPod| {
                (
                    pod.metadata.namespace.clone().unwrap_or_default(),
                    pod.metadata.name.clone().unwrap_or_default(),
                )
            };
            match event {
                // A deleted pod's reports go with it: churn must not grow the registry. Only
                // that pod object's: a new pod that reuses its name (a StatefulSet's) and
                // attached before this event came keeps its stream.
                Ok(watcher::Event::Delete(pod)) => {
                    let (namespace, name) = named(pod);
                    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
                    registry.forget(&namespace, &name, uid);
                }
                // A stream waiting for Synced may have been waiting for its pod to be known.
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                    let (namespace, name) = named(pod);
                    registry.pod_changed(&namespace, &name);
                }
                _ => {}
            }
        }
    })
    .touched_objects();
    let planned: Arc<Mutex<HashMap<String, Memory>>> = Arc::default();
    let (releases, release_writer) = reflector::store();
    let release_events = reflector(
        release_writer,
        watcher(
            api::<PluginRelease>(&client, namespace),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .inspect({
        let planned = planned.clone();
        let registry = registry.clone();
        let metrics = metrics.clone();
        move |event| {
            if let Ok(watcher::Event::Delete(release)) = event {
                metrics.release_deleted(
                    &release.namespace().unwrap_or_default(),
                    &release.name_any(),
                );
                // Streams waiting for its plan are owed it no more.
                registry.wake_settler();
                if let (Some(uid), Ok(mut planned)) = (release.uid(), planned.lock()) {
                    planned.remove(&uid);
                }
            }
        }
    })
    .touched_objects();

    let by_pod = releases.clone();
    let by_namespace = releases.clone();
    let changes = BroadcastStream::new(registry.changes())
        .filter_map(|namespace| async move { namespace.ok() });
    let woken = changes.flat_map(move |namespace| {
        let refs: Vec<ObjectRef<PluginRelease>> = by_namespace
            .state()
            .iter()
            .filter(|r| r.namespace().as_deref() == Some(namespace.as_str()))
            .map(|r| ObjectRef::from_obj(r.as_ref()))
            .collect();
        futures::stream::iter(refs)
    });
    tokio::spawn(synced::run(
        registry.clone(),
        pods.clone(),
        releases.clone(),
    ));
    tokio::spawn({
        let (pods, releases, health) = (pods.clone(), releases.clone(), health.clone());
        async move {
            // The controller waits on the release store too, and kube-runtime's readiness
            // signal wakes only its last waiter; polling again on a short timeout sees the
            // memoized result whichever waiter was woken.
            let synced = wait_ready(|| pods.wait_until_ready()).await
                && wait_ready(|| releases.wait_until_ready()).await;
            if !synced {
                return;
            }
            health.set_synced();
            tracing::info!("caches synced");
        }
    });
    let ctx = Arc::new(Context {
        client: client.clone(),
        health,
        metrics,
        plugin_health,
        providers: Providers::new()?,
        registry,
        pods,
        releases,
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        planned,
    });
    Controller::for_stream(release_events, ctx.releases.clone())
        .watches_stream(pod_events, move |pod: CachedPod| releases_of(&by_pod, &pod))
        .reconcile_on(woken)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::warn!(error = %e, "reconcile failed");
            }
        })
        .await;
    Ok(())
}

/// Waits until a store is ready (false if its writer is gone), re-polling every 250 ms.
async fn wait_ready<F, Fut, E>(ready: F) -> bool
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    loop {
        match tokio::time::timeout(Duration::from_millis(250), ready()).await {
            Ok(result) => return result.is_ok(),
            Err(_) => continue,
        }
    }
}

/// The releases whose selector picks this pod.
fn releases_of(releases: &Store<PluginRelease>, pod: &CachedPod) -> Vec<ObjectRef<PluginRelease>> {
    let labels = pod.labels();
    releases
        .state()
        .iter()
        .filter(|r| r.namespace() == pod.namespace() && selector::matches(&r.spec.selector, labels))
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

async fn reconcile(release: Arc<PluginRelease>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.health.ready() {
        // A follower (or a leader still syncing) watches but never acts.
        if let Ok(mut planned) = ctx.planned.lock() {
            planned.clear();
        }
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let started = Instant::now();
    let result = act(&release, &ctx).await;
    let label = result.as_ref().map_or_else(Error::metric_label, |_| "ok");
    ctx.metrics.reconciled(label, started.elapsed());
    result
}

async fn act(release: &Arc<PluginRelease>, ctx: &Arc<Context>) -> Result<Action, Error> {
    let name = describe(release);
    let namespace = release
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    // The schema bounds most of it; what it cannot express is refused here, before anything
    // is planned or sent.
    if let Some(reason) = crate::api::oversized(&release.spec) {
        let note = planner::Note {
            warning: true,
            reason: "SpecTooLarge",
            message: reason.clone(),
        };
        publish(&ctx.recorder, release, &note, None).await;
        return Err(Error::Oversized {
            release: name,
            reason,
        });
    }
    let now = Timestamp::now();
    let (views, sources) = observe(release, ctx, &namespace, now);
    let uid = release.uid().unwrap_or_default();
    let memory = ctx
        .remembered(&uid)
        .unwrap_or_else(|| Memory::of_cached(release.status.as_ref()));
    let measured = measure(
        &ctx.plugin_health,
        &ctx.providers,
        release,
        &memory.status,
        &views,
        now,
    )
    .await;
    let plan = planner::plan(&Input {
        spec: &release.spec,
        generation: release.metadata.generation.unwrap_or_default(),
        annotations: release.annotations(),
        status: &memory.status,
        pods: &views,
        measured: measured.as_ref(),
        now,
    });
    ctx.metrics
        .release_observed(&namespace, &release.name_any(), &plan.status, &views);
    let requeue = plan.requeue_after.unwrap_or(RESYNC).min(RESYNC);
    let shell = Shell {
        ctx,
        release,
        namespace: &namespace,
        views: &views,
        sources: &sources,
        now,
    };
    let carried = durable::carry_out(
        &shell,
        memory,
        plan,
        release.status.as_ref(),
        Instant::now(),
    )
    .await;
    ctx.remember(uid, carried.memory);
    if let Some(source) = carried.error {
        return Err(Error::Status {
            release: name,
            source,
        });
    }
    Ok(Action::requeue(
        carried.requeue.map_or(requeue, |r| r.min(requeue)),
    ))
}

/// Every pod the release selects, as the planner sees it, sorted by name, with where each
/// view came from: what is planned from a view goes out over its stream only.
fn observe(
    release: &PluginRelease,
    ctx: &Context,
    namespace: &str,
    now: Timestamp,
) -> (Vec<PodView>, Vec<Source>) {
    let plugin = &release.spec.plugin;
    let rivals: Vec<Arc<PluginRelease>> = ctx
        .releases
        .state()
        .into_iter()
        .filter(|r| {
            r.namespace().as_deref() == Some(namespace)
                && r.spec.plugin == *plugin
                && r.uid() != release.uid()
        })
        .collect();
    let mut seen: Vec<(PodView, Source)> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(namespace) && p.metadata.deletion_timestamp.is_none()
        })
        .filter(|p| selector::matches(&release.spec.selector, p.labels()))
        .map(|pod| pod_view(&ctx.registry, release, &rivals, pod, now))
        .collect();
    // Sorted by name, so a pod's stream is found by binary search.
    seen.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    seen.into_iter().unzip()
}

/// One reconcile's hands: the API server (status, events, pull secrets) and the sidecar
/// registry (assignments).
struct Shell<'a> {
    ctx: &'a Context,
    release: &'a PluginRelease,
    namespace: &'a str,
    views: &'a [PodView],
    sources: &'a [Source],
    now: Timestamp,
}

impl Effects for Shell<'_> {
    async fn write(&self, status: &PluginReleaseStatus) -> Result<(), kube::Error> {
        write_status(&self.ctx.client, self.release, status).await?;
        self.ctx.metrics.status_writes.inc();
        Ok(())
    }

    async fn send(&self, plan: &Plan) {
        let unsent = self.assign(plan).await;
        let planned_for = planned_streams(self.views, self.sources, &unsent);
        let uid = self.release.uid().unwrap_or_default();
        self.ctx
            .registry
            .planned(self.namespace, &uid, &planned_for);
    }

    async fn record(&self, note: &planner::Note, revision: Option<&str>) {
        self.ctx.metrics.rollout_event(note.reason);
        publish(&self.ctx.recorder, self.release, note, revision).await;
    }
}

impl Shell<'_> {
    /// Sends each planned assignment over its pod's stream; returns the pods (in name
    /// order) whose assignment did not go out: the release has not planned for their
    /// streams yet, so they are not told Synced.
    async fn assign<'p>(&self, plan: &'p Plan) -> Vec<&'p str> {
        let directives = self.directives(plan).await;
        let mut unsent: Vec<&str> = Vec::new();
        for (pod, revision) in &plan.assign {
            let source = self
                .views
                .binary_search_by(|v| v.name.as_str().cmp(pod))
                .ok()
                .and_then(|i| self.sources.get(i));
            let Some((stream, cached)) = source.and_then(|s| Some((s.stream?, &s.pod))) else {
                continue;
            };
            let Some(directive) = directives.get(revision).cloned().flatten() else {
                tracing::error!(release = %describe(self.release), pod = %pod, revision = ?revision, "revision is in neither the spec nor the history; not assigned");
                unsent.push(pod);
                continue;
            };
            let restarts = cached.restart_counts();
            if self
                .ctx
                .registry
                .assign(self.namespace, pod, stream, directive, restarts, self.now)
            {
                tracing::info!(release = %describe(self.release), pod = %pod, revision = ?revision, "assigned");
            } else {
                unsent.push(pod);
            }
        }
        unsent.sort_unstable();
        unsent
    }

    /// One directive per revision the plan assigns, shared by every pod it goes to (`None`:
    /// the revision is in neither the spec nor the history). Each revision is fetched with
    /// its own pull secret for its own URL: a rollback to a revision from a private
    /// registry authenticates even when the spec now names a public artifact.
    async fn directives<'p>(
        &self,
        plan: &'p Plan,
    ) -> HashMap<&'p Option<String>, Option<Arc<Directive>>> {
        let mut sources = HashMap::new();
        for (_, revision) in &plan.assign {
            sources.entry(revision).or_insert_with(|| match revision {
                Some(r) => revision::source_of(r, &self.release.spec, &plan.status.history),
                None => Some(revision::RevisionSource::default()),
            });
        }
        let mut secrets = HashMap::new();
        for source in sources.values().flatten() {
            if let Some(name) = &source.pull_secret
                && !secrets.contains_key(name)
            {
                secrets.insert(name.clone(), self.pull_secret(name).await);
            }
        }
        let mut directives = HashMap::with_capacity(sources.len());
        for (revision, source) in sources {
            let Some(source) = source else {
                directives.insert(revision, None);
                continue;
            };
            let secret = source
                .pull_secret
                .as_ref()
                .and_then(|n| secrets.get(n)?.as_ref());
            let credentials = match secret {
                Some(secret) => self.credentials(secret, &source.url).await,
                None => None,
            };
            directives.insert(
                revision,
                Some(Arc::new(Directive {
                    plugin: self.release.spec.plugin.clone(),
                    revision: revision.clone(),
                    url: source.url,
                    digest: source.digest,
                    config: source.config,
                    signature_key: source.signature_key,
                    credentials,
                })),
            );
        }
        directives
    }

    /// The pull secret `name` of the release's namespace. One that cannot be read is an
    /// event; the pods are assigned anyway and the sidecar then reports the registry's
    /// refusal per pod.
    async fn pull_secret(&self, name: &str) -> Option<k8s_openapi::api::core::v1::Secret> {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(self.ctx.client.clone(), self.namespace);
        match secrets.get(name).await {
            Ok(secret) => Some(secret),
            Err(e) => {
                let why = format!(
                    "release {}: pull secret {}/{name}: {e}",
                    describe(self.release),
                    self.namespace
                );
                self.unusable(why).await;
                None
            }
        }
    }

    /// The credentials `secret` holds for the host of `url` (an unusable secret is an
    /// event, as above).
    async fn credentials(
        &self,
        secret: &k8s_openapi::api::core::v1::Secret,
        url: &str,
    ) -> Option<crate::credentials::Credentials> {
        match crate::credentials::credentials_for(secret, url) {
            Ok(credentials) => credentials,
            Err(why) => {
                self.unusable(format!("release {}: {why}", describe(self.release)))
                    .await;
                None
            }
        }
    }

    async fn unusable(&self, message: String) {
        let note = planner::Note {
            warning: true,
            reason: "PullSecretUnusable",
            message,
        };
        publish(&self.ctx.recorder, self.release, &note, None).await;
    }
}

async fn write_status(
    client: &Client,
    release: &PluginRelease,
    status: &crate::api::PluginReleaseStatus,
) -> Result<(), kube::Error> {
    let api: Api<PluginRelease> =
        Api::namespaced(client.clone(), &release.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "hotload.dev/v1alpha1",
        "kind": "PluginRelease",
        "status": status,
    });
    api.patch_status(
        &release.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
}

/// Records `note` as an Event. The recorder folds events with the same action and reason
/// into one series (count and last time, first message kept), so the action names the
/// revision: a second revision's rollback is its own event, a repeat of one is counted.
async fn publish(
    recorder: &Recorder,
    release: &PluginRelease,
    note: &planner::Note,
    revision: Option<&str>,
) {
    let event = Event {
        type_: if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: note.reason.into(),
        note: Some(note.message.chars().take(1000).collect()),
        action: match revision {
            Some(revision) => format!("{} {revision}", note.reason),
            None => note.reason.into(),
        },
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &release.object_ref(&())).await {
        tracing::warn!(release = %describe(release), error = %e, "event not recorded");
    }
}

/// Retries a failed reconcile: a failed status write after its back-off ([`Memory`] counts
/// the failures in a row), anything else after 5 s.
fn error_policy(release: Arc<PluginRelease>, error: &Error, ctx: Arc<Context>) -> Action {
    let backoff = match error {
        Error::Status { .. } => release
            .uid()
            .and_then(|uid| ctx.remembered(&uid))
            .map(|memory| durable::write_backoff(memory.failures)),
        Error::NoNamespace(_) => None,
        // Nothing changes until the spec does (and a change reconciles at once).
        Error::Oversized { .. } => Some(Duration::from_secs(300)),
    };
    let after = backoff.unwrap_or(Duration::from_secs(5));
    tracing::warn!(release = %describe(&release), error = %error, kind = error.metric_label(), retry_in = ?after, "reconcile failed; retrying");
    Action::requeue(after)
}
