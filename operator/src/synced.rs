//! `Synced`: telling each sidecar stream that it has been sent its pod's complete set, so
//! the sidecar may turn the pod Ready once that set is loaded (and a pod no release selects
//! turns Ready at once).
//!
//! ```text
//!  connect ──▶ Registry.waiting[(ns, pod)] = {stream, uid, planned: []}
//!  reconcile of release R: Assigns ─▶ outbox;  then Registry::planned(R, its pods' streams)
//!  settler (woken by both, by pod and release changes, and every few seconds):
//!      owed(pod as cached, releases, planned) is empty ─▶ Registry::synced ─▶ outbox
//! ```
//!
//! What a stream is owed is worked out each time from the caches, not fixed when it
//! connects: a release created since is owed too, and one deleted since, or whose selector
//! (or the pod's labels) changed so that it no longer picks the pod, is not. `Synced` goes
//! into the same queue as the Assigns, after them, so it never overtakes what it vouches
//! for.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::api::PluginRelease;
use crate::pods::CachedPod;
use crate::registry::Registry;
use crate::selector;

/// How often the settler looks even when nothing woke it (a full queue, a lost wake-up).
const SWEEP: Duration = Duration::from_secs(5);
/// How long the settler lets wake-ups gather before it looks again: a fleet reconnecting
/// wakes it thousands of times, and each look copies the waiting list. Well below the
/// injected sidecar's readiness probe period (2 s), so no pod waits for it in practice.
const GATHER: Duration = Duration::from_millis(250);

/// Why a stream is not told `Synced` yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owed<'a> {
    /// The cache has not seen this pod object yet (or still holds an older one of its
    /// name), so which releases select it is unknown.
    UnknownPod,
    /// These releases (by name, in the pod's namespace) select the pod and have not planned
    /// for it.
    Plans(Vec<&'a str>),
}

/// What stream of pod object `uid` is still owed before `Synced`, given the pod as cached,
/// every release, and the releases (by uid) that have planned for the stream; `None` when
/// nothing is. A pod being deleted is owed nothing: no release plans for it. Pure.
pub fn owed<'a>(
    uid: &str,
    pod: Option<&CachedPod>,
    releases: &[&'a PluginRelease],
    planned: &[String],
) -> Option<Owed<'a>> {
    let Some(pod) = pod.filter(|p| p.metadata.uid.as_deref() == Some(uid)) else {
        return Some(Owed::UnknownPod);
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let labels = pod.labels();
    let namespace = pod.metadata.namespace.as_deref();
    let owing: Vec<&str> = releases
        .iter()
        .filter(|r| {
            r.metadata.namespace.as_deref() == namespace
                && selector::matches(&r.spec.selector, labels)
        })
        .filter(|r| {
            let uid = r.metadata.uid.as_deref().unwrap_or_default();
            !planned.iter().any(|p| p == uid)
        })
        .map(|r| r.metadata.name.as_deref().unwrap_or_default())
        .collect();
    (!owing.is_empty()).then_some(Owed::Plans(owing))
}

/// Sends `Synced` to every waiting stream that is owed nothing; returns how many.
pub fn settle(
    registry: &Registry,
    pods: &Store<CachedPod>,
    releases: &Store<PluginRelease>,
) -> usize {
    let waiting = registry.waiting();
    if waiting.is_empty() {
        return 0;
    }
    let all = releases.state();
    let mut by_namespace: HashMap<&str, Vec<&PluginRelease>> = HashMap::new();
    for release in &all {
        if let Some(ns) = release.metadata.namespace.as_deref() {
            by_namespace.entry(ns).or_default().push(release.as_ref());
        }
    }
    let mut sent = 0;
    for (namespace, pod, stream) in waiting {
        let cached = pods.get(&ObjectRef::new(&pod).within(&namespace));
        let releases = by_namespace
            .get(namespace.as_str())
            .map_or(&[][..], Vec::as_slice);
        match owed(&stream.uid, cached.as_deref(), releases, &stream.planned) {
            None => {
                if registry.synced(&namespace, &pod, stream.stream) {
                    tracing::debug!(%namespace, %pod, "sidecar synced");
                    sent += 1;
                }
            }
            Some(owed) => tracing::trace!(%namespace, %pod, ?owed, "sidecar not synced yet"),
        }
    }
    sent
}

/// Settles streams whenever the registry wakes the settler, and every [`SWEEP`], until
/// the process ends.
pub async fn run(registry: Arc<Registry>, pods: Store<CachedPod>, releases: Store<PluginRelease>) {
    loop {
        let _ = tokio::time::timeout(SWEEP, registry.settler_woken()).await;
        settle(&registry, &pods, &releases);
        tokio::time::sleep(GATHER).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Outgoing, outbox};
    use futures::StreamExt;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    fn pod(name: &str, uid: &str, labels: serde_json::Value) -> CachedPod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "uid": uid, "labels": labels},
        }))
        .unwrap()
    }

    fn release(name: &str, namespace: &str, app: &str) -> PluginRelease {
        serde_json::from_value(json!({
            "apiVersion": "hotload.dev/v1alpha1", "kind": "PluginRelease",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}")},
            "spec": {"plugin": name, "selector": {"matchLabels": {"app": app}},
                     "artifact": {"url": "https://plugins/p.wasm",
                                  "digest": format!("sha256:{}", "a".repeat(64))}},
        }))
        .unwrap()
    }

    #[test]
    fn a_pod_no_release_selects_is_owed_nothing() {
        let web = pod("web-1", "u1", json!({"app": "web"}));
        let other = release("geo", "shop", "maps");
        let elsewhere = release("auth", "prod", "web");
        assert_eq!(owed("u1", Some(&web), &[], &[]), None);
        assert_eq!(owed("u1", Some(&web), &[&other, &elsewhere], &[]), None);
    }

    #[test]
    fn every_release_that_selects_the_pod_must_have_planned_for_it() {
        let web = pod("web-1", "u1", json!({"app": "web"}));
        let auth = release("auth", "shop", "web");
        let geo = release("geo", "shop", "web");
        let releases = [&auth, &geo];
        assert_eq!(
            owed("u1", Some(&web), &releases, &[]),
            Some(Owed::Plans(vec!["auth", "geo"]))
        );
        assert_eq!(
            owed("u1", Some(&web), &releases, &["uid-geo".into()]),
            Some(Owed::Plans(vec!["auth"]))
        );
        assert_eq!(
            owed(
                "u1",
                Some(&web),
                &releases,
                &["uid-geo".into(), "uid-auth".into()]
            ),
            None
        );
        // A release deleted (or no longer selecting the pod) before it planned is owed
        // nothing: only the releases that select the pod now count.
        assert_eq!(owed("u1", Some(&web), &[&geo], &["uid-geo".into()]), None);
    }

    #[test]
    fn a_pod_the_cache_does_not_know_under_the_streams_uid_waits() {
        let old = pod("web-0", "old", json!({"app": "web"}));
        assert_eq!(owed("new", Some(&old), &[], &[]), Some(Owed::UnknownPod));
        assert_eq!(owed("new", None, &[], &[]), Some(Owed::UnknownPod));
    }

    #[test]
    fn a_pod_being_deleted_is_owed_nothing() {
        let mut going = pod("web-1", "u1", json!({"app": "web"}));
        going.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        let auth = release("auth", "shop", "web");
        assert_eq!(owed("u1", Some(&going), &[&auth], &[]), None);
    }

    fn stores(
        pods: Vec<CachedPod>,
        releases: Vec<PluginRelease>,
    ) -> (Store<CachedPod>, Store<PluginRelease>) {
        let (pod_store, mut pod_writer) = reflector::store();
        for pod in pods {
            pod_writer.apply_watcher_event(&Event::Apply(pod));
        }
        let (release_store, mut release_writer) = reflector::store();
        for release in releases {
            release_writer.apply_watcher_event(&Event::Apply(release));
        }
        (pod_store, release_store)
    }

    #[tokio::test]
    async fn the_settler_syncs_each_stream_once_its_releases_have_planned() {
        let registry = Registry::default();
        let (pods, releases) = stores(
            vec![
                pod("web-1", "u1", json!({"app": "web"})),
                pod("db-1", "u2", json!({"app": "db"})),
            ],
            vec![release("auth", "shop", "web")],
        );
        let (tx, mut web) = outbox();
        let web_stream = registry.connect("shop", "web-1", "u1", tx, Vec::new());
        let (tx, mut db) = outbox();
        registry.connect("shop", "db-1", "u2", tx, Vec::new());
        let (tx, mut unknown) = outbox();
        registry.connect("shop", "new-1", "u3", tx, Vec::new());

        // No release selects db-1: Synced at once. web-1 waits for auth; new-1 for the cache.
        assert_eq!(settle(&registry, &pods, &releases), 1);
        assert_eq!(db.next().await, Some(Outgoing::Synced));
        assert_eq!(registry.waiting().len(), 2);

        registry.planned("shop", "uid-auth", &[("web-1", web_stream)]);
        assert_eq!(settle(&registry, &pods, &releases), 1);
        assert_eq!(web.next().await, Some(Outgoing::Synced));
        assert_eq!(settle(&registry, &pods, &releases), 0, "once per stream");
        assert!(unknown.try_recv().is_err(), "nothing for new-1 yet");
        assert_eq!(registry.waiting().len(), 1);
    }

    #[tokio::test]
    async fn the_settler_wakes_on_a_connect() {
        let registry = Arc::new(Registry::default());
        let (pods, releases) = stores(vec![pod("db-1", "u2", json!({"app": "db"}))], Vec::new());
        let settler = tokio::spawn(run(registry.clone(), pods, releases));
        let (tx, mut db) = outbox();
        registry.connect("shop", "db-1", "u2", tx, Vec::new());
        let heard = tokio::time::timeout(Duration::from_secs(2), db.next()).await;
        settler.abort();
        assert_eq!(heard.ok().flatten(), Some(Outgoing::Synced));
    }
}
