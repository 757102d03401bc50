//! The reconciler: the thin shell around [`planner::plan`]. It gathers the release's pods
//! (from a cache of the few fields it reads, [`CachedPod`], so 10,000 pods stay cheap), every
//! sidecar's report (from the [`Registry`]) and any competing release, runs the planner,
//! sends the assignments, tells the registry which streams it has planned for (for
//! [`crate::synced`]), and writes status with server-side apply (at most once a second per
//! release) plus events.

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
use crate::metrics::Metrics;
use crate::planner::{self, Input, PodView};
use crate::pods::{CachedPod, keep_what_is_read};
use crate::registry::{Directive, Registry};
use crate::views::{Source, planned_streams, pod_view};
use crate::{revision, selector, synced};

/// The field manager of every status write.
pub const MANAGER: &str = "hotload-operator";
/// Releases are planned again at least this often (deadlines, reconnects, lost triggers).
const RESYNC: Duration = Duration::from_secs(60);
/// Status writes per release are at most this frequent.
const MIN_WRITE_INTERVAL: Duration = Duration::from_secs(1);

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
}

impl Error {
    /// A low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Status { .. } => "status_write",
            Error::NoNamespace(_) => "no_namespace",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    client: Client,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    pods: Store<CachedPod>,
    releases: Store<PluginRelease>,
    recorder: Recorder,
    /// The status each release was last planned to, by uid. Writes are coalesced and the
    /// cache lags behind them, so the next plan starts from here, never from an older cached
    /// status (which would undo a decision such as a rollback). Empty while this replica
    /// does not lead; a deleted release's entry goes with it.
    planned: Arc<Mutex<HashMap<String, Planned>>>,
}

/// A release's last plan: its status, and the events waiting for that status to be written.
#[derive(Clone)]
struct Planned {
    status: PluginReleaseStatus,
    notes: Vec<(planner::Note, Option<String>)>,
    /// When its status was last written (writes are at least MIN_WRITE_INTERVAL apart).
    written: Option<Instant>,
}

/// Runs the controller until the process is asked to stop; with `namespace`, it watches
/// (and needs RBAC in) that namespace only.
pub async fn run(
    client: Client,
    registry: Arc<Registry>,
    namespace: Option<&str>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
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
    let planned: Arc<Mutex<HashMap<String, Planned>>> = Arc::default();
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
        move |event| {
            if let Ok(watcher::Event::Delete(release)) = event {
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
    let now = Timestamp::now();
    let plugin = &release.spec.plugin;
    let rivals: Vec<Arc<PluginRelease>> = ctx
        .releases
        .state()
        .into_iter()
        .filter(|r| {
            r.namespace().as_deref() == Some(&namespace)
                && r.spec.plugin == *plugin
                && r.uid() != release.uid()
        })
        .collect();
    // Each connected pod's view comes from one stream; what is planned from it goes out
    // over that stream only. Sorted by name, so a pod's stream is found by binary search.
    let mut seen: Vec<(PodView, Source)> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(&namespace) && p.metadata.deletion_timestamp.is_none()
        })
        .filter(|p| selector::matches(&release.spec.selector, p.labels()))
        .map(|pod| pod_view(&ctx.registry, release, &rivals, pod, now))
        .collect();
    seen.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let (views, sources): (Vec<PodView>, Vec<Source>) = seen.into_iter().unzip();

    let uid = release.uid().unwrap_or_default();
    let remembered = ctx
        .planned
        .lock()
        .ok()
        .and_then(|planned| planned.get(&uid).cloned());
    let (status, remembered_notes, mut written) = match remembered {
        Some(Planned {
            status,
            notes,
            written,
        }) => (status, notes, written),
        None => (release.status.clone().unwrap_or_default(), Vec::new(), None),
    };
    let annotations = release.annotations().clone();
    let plan = planner::plan(&Input {
        spec: &release.spec,
        generation: release.metadata.generation.unwrap_or_default(),
        annotations: &annotations,
        status: &status,
        pods: &views,
        now,
    });
    let credentials = if plan.assign.is_empty() {
        None
    } else {
        match pull_credentials(&ctx.client, release, &namespace).await {
            Ok(credentials) => credentials,
            Err(why) => {
                // Assign anyway: the sidecar then reports the registry's refusal per pod.
                let note = planner::Note {
                    warning: true,
                    reason: "PullSecretUnusable",
                    message: why,
                };
                publish(&ctx.recorder, release, &note, None).await;
                None
            }
        }
    };
    // One directive per revision, shared by every pod it goes to.
    let mut directives: HashMap<&Option<String>, Arc<Directive>> = HashMap::new();
    // Pods whose assignment did not go out: the release has not planned for their streams
    // yet, so they are not told Synced.
    let mut unsent: Vec<&str> = Vec::new();
    for (pod, revision) in &plan.assign {
        let source = views
            .binary_search_by(|v| v.name.as_str().cmp(pod))
            .ok()
            .and_then(|i| sources.get(i));
        let Some((stream, cached)) = source.and_then(|s| Some((s.stream?, &s.pod))) else {
            continue;
        };
        let directive = match directives.get(revision) {
            Some(known) => known.clone(),
            None => {
                let source = match revision {
                    Some(r) => revision::source_of(r, &release.spec, &plan.status.history),
                    None => Some(revision::RevisionSource::default()),
                };
                let Some(source) = source else {
                    tracing::error!(release = %name, pod = %pod, revision = ?revision, "revision is in neither the spec nor the history; not assigned");
                    unsent.push(pod);
                    continue;
                };
                let directive = Arc::new(Directive {
                    plugin: plugin.clone(),
                    revision: revision.clone(),
                    url: source.url,
                    digest: source.digest,
                    config: source.config,
                    signature_key: source.signature_key,
                    credentials: credentials.clone(),
                });
                directives.insert(revision, directive.clone());
                directive
            }
        };
        let restarts = cached.restart_counts();
        if ctx
            .registry
            .assign(&namespace, pod, stream, directive, restarts, now)
        {
            tracing::info!(release = %name, pod = %pod, revision = ?revision, "assigned");
        } else {
            unsent.push(pod);
        }
    }
    unsent.sort_unstable();
    let planned_for = planned_streams(&views, &sources, &unsent);
    ctx.registry.planned(&namespace, &uid, &planned_for);

    let mut requeue = plan.requeue_after.unwrap_or(RESYNC).min(RESYNC);
    // Events wait until the status that explains them is written.
    let revision = plan.status.target_revision.clone();
    let mut pending = remembered_notes;
    pending.extend(plan.notes.iter().map(|n| (n.clone(), revision.clone())));
    let durable = if release.status.as_ref() == Some(&plan.status) {
        true
    } else {
        match written.map(|at| at.elapsed()) {
            // Coalesce: plan again when the interval is over.
            Some(elapsed) if elapsed < MIN_WRITE_INTERVAL => {
                requeue = requeue.min(MIN_WRITE_INTERVAL - elapsed);
                false
            }
            _ => {
                write_status(&ctx.client, release, &plan.status)
                    .await
                    .map_err(|source| Error::Status {
                        release: name.clone(),
                        source,
                    })?;
                written = Some(Instant::now());
                ctx.metrics.status_writes.inc();
                true
            }
        }
    };
    if durable {
        for (note, revision) in pending.drain(..) {
            ctx.metrics.rollout_event(note.reason);
            publish(&ctx.recorder, release, &note, revision.as_deref()).await;
        }
    }
    if let Ok(mut planned) = ctx.planned.lock() {
        planned.insert(
            uid,
            Planned {
                status: plan.status,
                notes: pending,
                written,
            },
        );
    }
    Ok(Action::requeue(requeue))
}

/// The credentials of the release's pull secret for its artifact (`None` when it names
/// none), or why the secret cannot be used.
async fn pull_credentials(
    client: &Client,
    release: &PluginRelease,
    namespace: &str,
) -> Result<Option<crate::credentials::Credentials>, String> {
    let Some(name) = release.spec.artifact.pull_secret.as_deref() else {
        return Ok(None);
    };
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), namespace);
    let secret = secrets.get(name).await.map_err(|e| {
        format!(
            "release {}: pull secret {namespace}/{name}: {e}",
            describe(release)
        )
    })?;
    crate::credentials::credentials_for(&secret, &release.spec.artifact.url)
        .map_err(|why| format!("release {}: {why}", describe(release)))
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

fn error_policy(release: Arc<PluginRelease>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(release = %describe(&release), error = %error, kind = error.metric_label(), "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}
