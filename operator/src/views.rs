//! What the planner sees of each pod ([`PodView`]), read from the pod as cached and what
//! the [`Registry`] knows of its sidecar: its stream, its report, and whether it crash-loops
//! while loading ([`crash_loop`]). Also which streams a reconcile has planned for, for
//! [`crate::synced`].

use std::sync::Arc;

use jiff::Timestamp;
use kube::ResourceExt;

use crate::api::{AckState, PluginRelease, describe};
use crate::crashloop::crash_loop;
use crate::planner::{self, PodView};
use crate::pods::{CachedPod, ContainerRestarts};
use crate::registry::{Registry, Sighting};
use crate::selector;

/// Where a pod's view came from: the sidecar stream it was read from (`None`: not
/// connected), and the pod as cached.
pub struct Source {
    /// The stream (`None`: not connected).
    pub stream: Option<u64>,
    /// The pod as cached.
    pub pod: Arc<CachedPod>,
}

/// The streams a reconcile has planned for, `(pod, stream)` in name order: every connected
/// pod it saw but those whose assignment did not go out (`unsent`, in name order too).
pub fn planned_streams<'a>(
    views: &'a [PodView],
    sources: &[Source],
    unsent: &[&str],
) -> Vec<(&'a str, u64)> {
    views
        .iter()
        .zip(sources)
        .filter(|(view, _)| unsent.binary_search(&view.name.as_str()).is_err())
        .filter_map(|(view, source)| Some((view.name.as_str(), source.stream?)))
        .collect()
}

/// What the planner sees of one pod, and where it came from.
pub fn pod_view(
    registry: &Registry,
    release: &PluginRelease,
    rivals: &[Arc<PluginRelease>],
    pod: Arc<CachedPod>,
    now: Timestamp,
) -> (PodView, Source) {
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let created = |r: &PluginRelease| r.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    let names: Vec<String> = std::iter::once(release)
        .chain(
            rivals
                .iter()
                .map(AsRef::as_ref)
                .filter(|r| selector::matches(&r.spec.selector, pod.labels())),
        )
        .map(describe)
        .collect();
    let claims: Vec<(Timestamp, &str)> = std::iter::once(release)
        .chain(
            rivals
                .iter()
                .map(AsRef::as_ref)
                .filter(|r| selector::matches(&r.spec.selector, pod.labels())),
        )
        .zip(&names)
        .map(|(r, n)| (created(r), n.as_str()))
        .collect();
    let me = describe(release);
    let conflict = planner::owner(&claims)
        .filter(|owner| *owner != me)
        .map(str::to_string);
    let plugin = &release.spec.plugin;
    let mut sighting = registry.view(&namespace, &name, &uid, plugin);
    // A load this operator did not assign (a sidecar reloading after its own restart, or
    // after the operator's) is measured for crash loops from when the operator hears of it.
    if let (Some(stream), Some(report)) = (sighting.stream, &sighting.report)
        && matches!(report.state, AckState::Pending | AckState::Loading)
        && let Some(revision) = report.assigned.as_deref()
        && sighting
            .baseline
            .as_ref()
            .and_then(|b| b.revision.as_deref())
            != Some(revision)
    {
        let restarts = pod.restart_counts();
        registry.baseline_if_missing(&namespace, &name, stream, plugin, revision, restarts);
        sighting.baseline = registry.view(&namespace, &name, &uid, plugin).baseline;
    }
    let created = pod.creation_timestamp().map_or(now, |t| t.0);
    let view = view_of(name, created, &sighting, &pod.containers, conflict);
    let stream = sighting.stream;
    (view, Source { stream, pod })
}

/// The planner's view of a pod from what the registry knows of it, its creation time and
/// its containers' restarts: a pod crash-looping while it loads a revision has failed to
/// load it ([`crash_loop`]). Pure.
pub fn view_of(
    name: String,
    created: Timestamp,
    sighting: &Sighting,
    containers: &[ContainerRestarts],
    conflict: Option<String>,
) -> PodView {
    let connected = sighting.stream.is_some();
    let Some(report) = &sighting.report else {
        return PodView {
            name,
            connected,
            assigned: None,
            serving: None,
            state: AckState::Pending,
            reason: None,
            since: created,
            conflict,
            workers: 0,
            workers_loaded: 0,
        };
    };
    let crashed = crash_loop(
        report.state,
        report.assigned.as_deref(),
        sighting.baseline.as_ref(),
        containers,
    );
    let (state, reason) = match crashed {
        Some(cause) => (AckState::Failed, Some(cause)),
        None => (report.state, report.reason.clone()),
    };
    PodView {
        name,
        connected,
        assigned: report.assigned.clone(),
        serving: report.serving.clone(),
        state,
        reason,
        since: report.since,
        conflict,
        workers: report.workers,
        workers_loaded: report.workers_loaded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crashloop::Baseline;
    use crate::pods::Termination;
    use crate::registry::PluginReport;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn loading(revision: &str) -> PluginReport {
        PluginReport {
            assigned: Some(revision.into()),
            serving: Some("r0".into()),
            state: AckState::Loading,
            reason: None,
            since: at(10),
            workers: 4,
            workers_loaded: 1,
        }
    }

    fn app(restarts: i32) -> ContainerRestarts {
        ContainerRestarts {
            name: "app".into(),
            restarts,
            last: Some(Termination {
                reason: Some("Error".into()),
                exit_code: 1,
            }),
        }
    }

    #[test]
    fn a_pod_crash_looping_while_it_loads_is_seen_as_a_failed_load() {
        let sighting = Sighting {
            stream: Some(7),
            report: Some(loading("c0f34a4280")),
            baseline: Some(Baseline {
                revision: Some("c0f34a4280".into()),
                restarts: vec![("app".into(), 0)],
            }),
        };
        let calm = view_of("web-1".into(), at(0), &sighting, &[app(1)], None);
        assert_eq!(
            (calm.state, calm.reason.as_deref(), calm.since),
            (AckState::Loading, None, at(10))
        );
        assert_eq!((calm.workers, calm.workers_loaded), (4, 1));

        let looping = view_of("web-1".into(), at(0), &sighting, &[app(3)], None);
        assert_eq!(looping.state, AckState::Failed);
        assert_eq!(
            looping.reason.as_deref(),
            Some(
                "container app restarted 3 times while loading revision c0f34a4280 \
                 (last state: Error, exit code 1)"
            )
        );
        assert_eq!(
            (looping.assigned.as_deref(), looping.since),
            (Some("c0f34a4280"), at(10)),
            "a failure of that assignment, timed from it"
        );
    }

    #[test]
    fn a_pod_the_registry_knows_nothing_of_is_pending_since_it_was_created() {
        let view = view_of("web-1".into(), at(0), &Sighting::default(), &[app(9)], None);
        assert_eq!(
            (view.connected, view.state, view.since, view.assigned),
            (false, AckState::Pending, at(0), None)
        );
    }

    #[test]
    fn a_release_has_planned_for_every_connected_pod_whose_assignment_went_out() {
        let view = |name: &str| view_of(name.into(), at(0), &Sighting::default(), &[], None);
        let views = [view("a"), view("b"), view("c"), view("d")];
        let source = |stream| Source {
            stream,
            pod: Arc::new(CachedPod::default()),
        };
        let sources = [
            source(Some(1)),
            source(None),
            source(Some(3)),
            source(Some(4)),
        ];
        assert_eq!(
            planned_streams(&views, &sources, &["c"]),
            [("a", 1), ("d", 4)],
            "b is not connected; c's assignment did not go out"
        );
    }
}
