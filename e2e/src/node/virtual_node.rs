//! Virtual nodes, for the fleet-scale benchmarks: Nodes the agent registers and keeps alive
//! like its process nodes, whose pods it reports Running and Ready without starting
//! anything. Ten thousand sidecar+app process pairs do not fit on this machine; the
//! benchmark (`hotload-e2e bench rollout`) simulates their sidecars instead, and these pods
//! are what the operator selects, the tokens are bound to, and the status tells about.
//!
//! A virtual node is tainted `hotload.dev/virtual=true:NoSchedule`, so only pods that ask
//! for it (by `nodeName`) land there. Their IPs come from 198.18.64.0/18, which no route
//! leads to: nothing is listening on them.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use serde_json::json;

/// The name of virtual node `index`.
pub fn virtual_node_name(index: u8) -> String {
    format!("hotload-virtual-{index}")
}

/// The taint that keeps ordinary pods off virtual nodes.
pub const VIRTUAL_TAINT: &str = "hotload.dev/virtual";

/// The `n`th virtual pod address (198.18.64.0/18 wraps after 16,382 pods).
pub fn virtual_pod_ip(n: u32) -> Ipv4Addr {
    let offset = 1 + n % 16_382;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 0)) + offset)
}

/// The status a virtual pod is given: Running, Ready, every container running.
pub fn virtual_status(pod: &Pod, ip: Ipv4Addr, now: Timestamp) -> serde_json::Value {
    let containers: Vec<_> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({"name": c.name, "image": c.image, "imageID": "", "ready": true,
                   "started": true, "restartCount": 0,
                   "state": {"running": {"startedAt": now.to_string()}}})
        })
        .collect();
    let condition = |type_: &str| json!({"type": type_, "status": "True", "lastTransitionTime": now.to_string()});
    json!({"status": {
        "phase": "Running",
        "hostIP": crate::netplan::NODE_IP.to_string(),
        "podIP": ip.to_string(),
        "podIPs": [{"ip": ip.to_string()}],
        "startTime": now.to_string(),
        "conditions": [condition("PodReadyToStartContainers"), condition("Initialized"),
                       condition("ContainersReady"), condition("Ready")],
        "containerStatuses": containers,
    }})
}

/// Registers virtual node `index` (tainted, `max_pods` capacity).
pub async fn register(client: &Client, index: u8, max_pods: u32) -> anyhow::Result<()> {
    let name = virtual_node_name(index);
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64", "node.hotload.dev/agent": "virtual"}},
        "spec": {"taints": [{"key": VIRTUAL_TAINT, "value": "true", "effect": "NoSchedule"}]},
    }))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let mut status = serde_json::to_value(super::node_status(0, max_pods))?;
    status["addresses"] = json!([{"type": "InternalIP", "address": crate::netplan::NODE_IP.to_string()},
                                 {"type": "Hostname", "address": name}]);
    status["daemonEndpoints"] = json!({"kubeletEndpoint": {"Port": 0}});
    nodes
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    Ok(())
}

/// Marks each pod bound to virtual node `index` Running (once), and completes deletions
/// (there is nothing to stop), until the watch ends.
pub async fn run(client: Client, index: u8) {
    let name = virtual_node_name(index);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={name}"));
    let next_ip = Arc::new(AtomicU32::new(0));
    // Up to 16 status writes in flight: a 10,000-pod fleet comes up in about a minute.
    let events = watcher(Api::<Pod>::all(client.clone()), config)
        .default_backoff()
        .map(|event| {
            let (client, next_ip) = (client.clone(), next_ip.clone());
            async move {
                let pods = match event {
                    Ok(Event::Apply(pod) | Event::InitApply(pod)) => vec![pod],
                    Ok(_) => Vec::new(),
                    Err(e) => {
                        tracing::warn!(error = %e, "virtual node pod watch");
                        Vec::new()
                    }
                };
                for pod in pods {
                    settle(&client, &pod, &next_ip).await;
                }
            }
        })
        .buffer_unordered(16);
    let mut events = std::pin::pin!(events);
    while events.next().await.is_some() {}
}

async fn settle(client: &Client, pod: &Pod, next_ip: &AtomicU32) {
    let ObjectMeta {
        name: Some(name),
        namespace: Some(namespace),
        ..
    } = &pod.metadata
    else {
        return;
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    if pod.metadata.deletion_timestamp.is_some() {
        let _ = pods
            .delete(name, &DeleteParams::default().grace_period(0))
            .await;
        return;
    }
    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    if running {
        return;
    }
    let ip = virtual_pod_ip(next_ip.fetch_add(1, Ordering::Relaxed));
    let status = virtual_status(pod, ip, Timestamp::now());
    if let Err(e) = pods
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
    {
        tracing::warn!(pod = %name, error = %e, "virtual pod status");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_ips_stay_in_their_range() {
        assert_eq!(virtual_pod_ip(0), Ipv4Addr::new(198, 18, 64, 1));
        assert_eq!(virtual_pod_ip(300), Ipv4Addr::new(198, 18, 65, 45));
        assert_eq!(virtual_pod_ip(16_381), Ipv4Addr::new(198, 18, 127, 254));
        assert_eq!(virtual_pod_ip(16_382), Ipv4Addr::new(198, 18, 64, 1));
    }

    #[test]
    fn a_virtual_pod_is_running_and_ready() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "app", "image": "x"}]}}))
        .unwrap();
        let status = virtual_status(&pod, Ipv4Addr::new(198, 18, 64, 9), Timestamp::UNIX_EPOCH);
        assert_eq!(status["status"]["phase"], "Running");
        assert_eq!(status["status"]["podIP"], "198.18.64.9");
        assert_eq!(status["status"]["containerStatuses"][0]["ready"], true);
        assert!(
            status["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Ready")
        );
    }
}
