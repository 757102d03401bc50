//! What the operator keeps of each pod: a [`CachedPod`], decoded straight from the pods
//! watch into the few fields the controller reads (name, namespace, uid, labels, creation
//! and deletion times, and each container's restart count and last termination). The rest
//! of a pod (its spec, managed fields, most of its status: several KiB of JSON) is skipped
//! while decoding and never allocated, so 10,000 pods cost a few MiB of cache.
//!
//! Watching whole pods rather than their metadata (as before) costs only the bytes on the
//! wire: a metadata watch sees every change of a pod too, since each bumps its
//! resourceVersion.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

/// A pod as the operator caches it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "Wire")]
pub struct CachedPod {
    /// The pod's metadata, trimmed by [`keep_what_is_read`].
    pub metadata: ObjectMeta,
    /// Its containers (app and init containers, the native sidecar among them) that have a
    /// status.
    pub containers: Vec<ContainerRestarts>,
}

/// One container's restarts, as the kubelet reports them in the pod's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerRestarts {
    /// The container's name.
    pub name: String,
    /// `restartCount`.
    pub restarts: i32,
    /// How its last run ended (`lastState.terminated`), if it ended.
    pub last: Option<Termination>,
}

/// How a container's run ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Termination {
    /// `Error`, `OOMKilled`, `Completed`, …
    #[serde(default)]
    pub reason: Option<String>,
    /// The process's exit code.
    #[serde(default)]
    pub exit_code: i32,
}

impl k8s_openapi::Resource for CachedPod {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for CachedPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl CachedPod {
    /// Each container's restart count now, by name: what a crash loop is measured from.
    pub fn restart_counts(&self) -> Vec<(String, i32)> {
        self.containers
            .iter()
            .map(|c| (c.name.clone(), c.restarts))
            .collect()
    }
}

/// A pod as the API server sends it, read only as far as [`CachedPod`] needs (serde skips
/// every other field without building it).
#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    status: Option<WireStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireStatus {
    #[serde(default)]
    container_statuses: Option<Vec<WireContainer>>,
    #[serde(default)]
    init_container_statuses: Option<Vec<WireContainer>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireContainer {
    name: String,
    #[serde(default)]
    restart_count: i32,
    #[serde(default)]
    last_state: Option<WireState>,
}

#[derive(Deserialize)]
struct WireState {
    #[serde(default)]
    terminated: Option<Termination>,
}

impl From<Wire> for CachedPod {
    fn from(wire: Wire) -> Self {
        let status = wire.status;
        let containers = status
            .map(|s| {
                let init = s.init_container_statuses.unwrap_or_default();
                let apps = s.container_statuses.unwrap_or_default();
                init.into_iter()
                    .chain(apps)
                    .map(|c| ContainerRestarts {
                        name: c.name,
                        restarts: c.restart_count,
                        last: c.last_state.and_then(|s| s.terminated),
                    })
                    .collect()
            })
            .unwrap_or_default();
        CachedPod {
            metadata: wire.metadata,
            containers,
        }
    }
}

/// Trims a cached pod's metadata to what the reconciler reads: its name, namespace, uid,
/// labels and creation and deletion times. Everything else (managed fields above all, a few
/// KiB of JSON per pod, and annotations) would be kept once per pod for nothing: at 10,000
/// pods that was 110 MiB of the operator's memory.
pub fn keep_what_is_read(pod: &mut CachedPod) {
    let meta = std::mem::take(&mut pod.metadata);
    pod.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        labels: meta.labels,
        creation_timestamp: meta.creation_timestamp,
        deletion_timestamp: meta.deletion_timestamp,
        ..ObjectMeta::default()
    };
    pod.containers.shrink_to_fit();
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::runtime::reflector::ObjectRef;
    use serde_json::json;

    /// A pod as the API server sends it, with everything the operator does not read.
    fn full_pod() -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": "u-1", "resourceVersion": "42",
                "labels": {"app": "web"},
                "annotations": {"big": "x".repeat(4096)},
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "deletionTimestamp": "2026-01-01T00:10:00Z",
                "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                     "name": "web", "uid": "rs-1"}],
            },
            "spec": {"containers": [{"name": "app", "image": "web:1"}]},
            "status": {
                "phase": "Running",
                "initContainerStatuses": [{
                    "name": "hotload-sidecar", "image": "s:1", "imageID": "", "ready": true,
                    "restartCount": 0, "started": true,
                    "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}},
                }],
                "containerStatuses": [{
                    "name": "app", "image": "web:1", "imageID": "", "ready": false,
                    "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"reason": "Error", "exitCode": 1,
                                                 "startedAt": "2026-01-01T00:01:00Z",
                                                 "finishedAt": "2026-01-01T00:01:02Z"}},
                }],
            },
        })
    }

    #[test]
    fn a_pod_is_decoded_into_what_is_read_and_nothing_else() {
        let mut pod: CachedPod = serde_json::from_value(full_pod()).unwrap();
        keep_what_is_read(&mut pod);
        let time = |s: &str| Time(s.parse::<Timestamp>().unwrap());
        assert_eq!(
            pod,
            CachedPod {
                metadata: ObjectMeta {
                    name: Some("web-1".into()),
                    namespace: Some("shop".into()),
                    uid: Some("u-1".into()),
                    resource_version: Some("42".into()),
                    labels: Some([("app".to_string(), "web".to_string())].into()),
                    creation_timestamp: Some(time("2026-01-01T00:00:00Z")),
                    deletion_timestamp: Some(time("2026-01-01T00:10:00Z")),
                    ..Default::default()
                },
                containers: vec![
                    ContainerRestarts {
                        name: "hotload-sidecar".into(),
                        restarts: 0,
                        last: None,
                    },
                    ContainerRestarts {
                        name: "app".into(),
                        restarts: 3,
                        last: Some(Termination {
                            reason: Some("Error".into()),
                            exit_code: 1,
                        }),
                    },
                ],
            }
        );
        assert_eq!(
            pod.restart_counts(),
            [("hotload-sidecar".to_string(), 0), ("app".to_string(), 3)]
        );
        // The reflector keys its store by name and namespace; both survive.
        assert_eq!(
            ObjectRef::from_obj(&pod),
            ObjectRef::new("web-1").within("shop")
        );
    }

    #[test]
    fn a_pod_without_status_has_no_containers() {
        let pod: CachedPod = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop"},
            "status": null,
        }))
        .unwrap();
        assert!(pod.containers.is_empty());
        let pod: CachedPod =
            serde_json::from_value(json!({"metadata": {"name": "web-1"}, "status": {}})).unwrap();
        assert!(pod.containers.is_empty());
    }

    #[test]
    fn a_pod_list_decodes_into_cached_pods() {
        // What the watcher's initial list reads: items carry no apiVersion or kind.
        let mut item = full_pod();
        item.as_object_mut().unwrap().remove("apiVersion");
        item.as_object_mut().unwrap().remove("kind");
        let list: kube::core::ObjectList<CachedPod> = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "7"},
            "items": [item],
        }))
        .unwrap();
        assert_eq!(list.items[0].containers.len(), 2);
    }
}
