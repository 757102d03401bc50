//! The controller's hands for analysis: when a release's window is due
//! ([`analysis::due`]), measure it for every check at once — the built-in checks from the
//! health store the sidecars' reports fill, Prometheus queries and webhook gates over HTTP —
//! and hand the [`Measured`] window to the planner, which judges it. Nothing here decides.

use futures::future::join_all;
use jiff::Timestamp;
use kube::ResourceExt;

use crate::analysis::{self, Measured, Measurement, Span};
use crate::api::{Check, PluginRelease, PluginReleaseStatus};
use crate::health::HealthStore;
use crate::planner::PodView;
use crate::providers::{Providers, Window};

/// Measures the window of `status.analysis` that is due at `now`, if one is.
pub async fn measure(
    store: &HealthStore,
    providers: &Providers,
    release: &PluginRelease,
    status: &PluginReleaseStatus,
    pods: &[PodView],
    now: Timestamp,
) -> Option<Measured> {
    let spec = release.spec.analysis.as_ref()?;
    let analysis = status.analysis.as_ref()?;
    let span = analysis::due(spec, analysis, now)?;
    let window = window(release, status, &analysis.revision, pods, span);
    let checks = join_all(
        spec.checks
            .iter()
            .map(|check| measure_check(store, providers, check, &window)),
    )
    .await;
    Some(Measured {
        revision: analysis.revision.clone(),
        start: span.start,
        end: span.end,
        checks,
    })
}

/// What the checks are asked about: the release, its target and stable revisions, the pods
/// running the target, the span.
fn window(
    release: &PluginRelease,
    status: &PluginReleaseStatus,
    target: &str,
    pods: &[PodView],
    span: Span,
) -> Window {
    let interval = release
        .spec
        .analysis
        .as_ref()
        .map_or_else(|| "10s".into(), |a| a.interval.clone());
    Window {
        namespace: release.namespace().unwrap_or_default(),
        release: release.name_any(),
        plugin: release.spec.plugin.clone(),
        revision: target.to_string(),
        stable_revision: status
            .stable_revision
            .clone()
            .filter(|stable| stable != target),
        step: status.current_step,
        pods: pods
            .iter()
            .filter(|p| p.serving.as_deref() == Some(target))
            .map(|p| p.name.clone())
            .collect(),
        start: span.start,
        end: span.end,
        interval,
    }
}

async fn measure_check(
    store: &HealthStore,
    providers: &Providers,
    check: &Check,
    window: &Window,
) -> Measurement {
    if let Some(prometheus) = &check.prometheus {
        return Measurement::Value(providers.prometheus(prometheus, window).await);
    }
    if let Some(webhook) = &check.webhook {
        return Measurement::Gate(providers.webhook(webhook, window).await);
    }
    let sample = |revision: &str| {
        store.sample(
            &window.namespace,
            &window.plugin,
            revision,
            window.start,
            window.end,
        )
    };
    let target = sample(&window.revision);
    let stable = window
        .stable_revision
        .as_deref()
        .map(sample)
        .unwrap_or_default();
    Measurement::Health {
        target: target.counts,
        target_pods: target.pods.len(),
        stable: stable.counts,
    }
}
