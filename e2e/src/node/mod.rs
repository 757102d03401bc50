//! The node agent: a kubelet that runs pods' containers as host processes.
//!
//! ```text
//!   apiserver ──watch pods (spec.nodeName = hotload-node-N)──▶ Agent ──▶ pod::run (one task per pod)
//!       ▲                                                               │ sandbox (netns), volumes
//!       │ status patches, events, leases, Node status                  │ container::supervise ×N
//!       └───────────────────────────────────────────────────────────────┘   probes, restarts, logs
//!   apiserver ──HTTPS /containerLogs──▶ server (kubectl logs)
//! ```
//! It registers `--nodes` Nodes that share the node netns and one process; each owns a /24
//! of pod addresses and a kubelet port.

pub mod container;
pub mod dns;
pub mod emptydir;
pub mod env;
pub mod pod;
pub mod probe;
pub mod restart;
pub mod sandbox;
pub mod server;
pub mod status;
pub mod virtual_node;
pub mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Pod, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::watcher::{self, Event as WatchEvent, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::images::ImageMap;
use crate::netplan::{NODE_IP, PodIpPool, kubelet_port, node_pod_cidr};

/// Arguments of `node-agent`.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// Kubeconfig of the agent's identity.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// How many Nodes to register.
    #[arg(long, default_value_t = 1)]
    pub nodes: u8,
    /// Pods each Node accepts.
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// Virtual Nodes to register (their pods run nothing; see [`virtual_node`]).
    #[arg(long, default_value_t = 0)]
    pub virtual_nodes: u8,
    /// Pods each virtual Node accepts.
    #[arg(long, default_value_t = 12_000)]
    pub virtual_max_pods: u32,
    /// The cluster state directory (images.json, pods/).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Serving certificate of the kubelet API.
    #[arg(long)]
    pub tls_cert: PathBuf,
    /// Its key.
    #[arg(long)]
    pub tls_key: PathBuf,
    /// CA that client certificates (the apiserver's) must chain to.
    #[arg(long)]
    pub client_ca: PathBuf,
    /// First restart back-off (the kubelet's is 10s; it doubles up to 5 minutes).
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub restart_backoff: Duration,
}

fn parse_seconds(s: &str) -> Result<Duration, std::num::ParseFloatError> {
    s.trim_end_matches('s')
        .parse::<f64>()
        .map(Duration::from_secs_f64)
}

/// The PATH containers and components get.
pub fn container_path() -> String {
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()
}

/// The name of node `index`.
pub fn node_name(index: u8) -> String {
    format!("hotload-node-{index}")
}

/// What the pods' workers share.
pub struct Agent {
    /// API client.
    pub client: Client,
    /// Image → binary map.
    pub images: ImageMap,
    /// This binary, run as `sandbox` and `container-init`.
    pub exe: PathBuf,
    /// Where pod directories live.
    pub pods_dir: PathBuf,
    /// First restart back-off.
    pub backoff_base: Duration,
    recorder: Recorder,
    services: Store<Service>,
    pools: Mutex<Vec<PodIpPool>>,
    pod_dirs: Mutex<HashMap<(String, String), PathBuf>>,
    hosts: Mutex<HashMap<String, HostsFile>>,
}

struct HostsFile {
    namespace: String,
    name: String,
    ip: String,
    path: PathBuf,
}

impl Agent {
    /// Every Service the agent has seen.
    pub fn services(&self) -> Vec<Service> {
        self.services
            .state()
            .iter()
            .map(|s| (**s).clone())
            .collect()
    }

    /// Publishes an event about a pod (failures are logged, never fatal).
    pub async fn event(&self, pod: &Pod, type_: EventType, reason: &str, note: &str) {
        let event = pod::event(type_, reason, note);
        if let Err(e) = self.recorder.publish(&event, &pod::reference(pod)).await {
            tracing::debug!(reason, error = %e, "event not recorded");
        }
    }

    fn allocate_ip(&self, node: u8) -> Option<Ipv4Addr> {
        self.pools
            .lock()
            .ok()?
            .get_mut(usize::from(node))?
            .allocate()
    }

    fn release_ip(&self, ip: Ipv4Addr) {
        if let Ok(mut pools) = self.pools.lock() {
            for pool in pools.iter_mut() {
                pool.release(ip);
            }
        }
    }

    fn register_pod_dir(&self, namespace: &str, name: &str, dir: &Path) {
        if let Ok(mut dirs) = self.pod_dirs.lock() {
            dirs.insert((namespace.into(), name.into()), dir.to_path_buf());
        }
    }

    fn unregister_pod_dir(&self, namespace: &str, name: &str) {
        if let Ok(mut dirs) = self.pod_dirs.lock() {
            dirs.remove(&(namespace.to_string(), name.to_string()));
        }
    }

    /// The directory of a pod on this agent.
    pub fn pod_dir(&self, namespace: &str, name: &str) -> Option<PathBuf> {
        self.pod_dirs
            .lock()
            .ok()?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    fn register_hosts(&self, uid: &str, namespace: &str, name: &str, ip: &str, path: &Path) {
        if let Ok(mut hosts) = self.hosts.lock() {
            hosts.insert(
                uid.to_string(),
                HostsFile {
                    namespace: namespace.into(),
                    name: name.into(),
                    ip: ip.into(),
                    path: path.to_path_buf(),
                },
            );
        }
    }

    fn unregister_hosts(&self, uid: &str) {
        if let Ok(mut hosts) = self.hosts.lock() {
            hosts.remove(uid);
        }
    }

    /// Rewrites every pod's /etc/hosts in place (it is bind-mounted, so the inode must stay).
    fn refresh_hosts(&self) {
        let services = self.services();
        let Ok(hosts) = self.hosts.lock() else { return };
        for file in hosts.values() {
            let text = dns::render_hosts(&file.name, &file.ip, &file.namespace, &services);
            if std::fs::read_to_string(&file.path).ok().as_deref() != Some(text.as_str())
                && let Err(e) = std::fs::write(&file.path, text)
            {
                tracing::warn!(path = %file.path.display(), error = %e, "writing /etc/hosts");
            }
        }
    }

    fn pod_cgroup_dir(&self, uid: &str) -> PathBuf {
        crate::cgroup::mount_point()
            .unwrap_or_default()
            .join(crate::cgroup::ROOT)
            .join("pods")
            .join(uid)
    }
}

/// Runs the node agent until SIGTERM.
pub async fn run(args: AgentArgs) -> Result<()> {
    emptydir::enter_own_mount_namespace();
    let client = crate::cluster::client_for(&args.kubeconfig).await?;
    let images = ImageMap::load(&args.state_dir.join("images.json"))?;
    let (services, writer) = reflector::store();
    let service_events = reflector(
        writer,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects();
    let agent = Arc::new(Agent {
        client: client.clone(),
        images,
        exe: std::env::current_exe()?,
        pods_dir: args.state_dir.join("pods"),
        backoff_base: args.restart_backoff,
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "kubelet".into(),
                instance: Some("hotload-node-agent".into()),
            },
        ),
        services: services.clone(),
        pools: Mutex::new((0..args.nodes).map(PodIpPool::new).collect()),
        pod_dirs: Mutex::default(),
        hosts: Mutex::default(),
    });
    tokio::spawn({
        let agent = agent.clone();
        async move {
            let mut events = std::pin::pin!(service_events);
            while let Some(event) = events.next().await {
                if event.is_ok() {
                    agent.refresh_hosts();
                }
            }
        }
    });
    services
        .wait_until_ready()
        .await
        .context("waiting for the Service cache")?;

    for index in 0..args.nodes {
        register_node(&client, index, args.max_pods).await?;
        let port = kubelet_port(index);
        let listener = tokio::net::TcpListener::bind((NODE_IP, port))
            .await
            .with_context(|| format!("binding the kubelet API on {NODE_IP}:{port}"))?;
        let tls = crate::tls::acceptor(&args.tls_cert, &args.tls_key, Some(&args.client_ca))?;
        tokio::spawn(server::serve(agent.clone(), listener, tls));
    }
    let mut names: Vec<String> = (0..args.nodes).map(node_name).collect();
    for index in 0..args.virtual_nodes {
        virtual_node::register(&client, index, args.virtual_max_pods).await?;
        tokio::spawn(virtual_node::run(client.clone(), index));
        names.push(virtual_node::virtual_node_name(index));
    }
    tokio::spawn(heartbeat(client.clone(), names));

    let streams = (0..args.nodes).map(|index| {
        let config =
            watcher::Config::default().fields(&format!("spec.nodeName={}", node_name(index)));
        watcher(Api::<Pod>::all(client.clone()), config)
            .default_backoff()
            .map_ok(move |event| (index, event))
            .boxed()
    });
    let mut pods = futures::stream::select_all(streams);
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let mut seen: HashMap<u8, Vec<String>> = HashMap::new();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tracing::info!(nodes = args.nodes, "node agent running");
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            event = pods.next() => match event {
                Some(Ok((node, event))) => dispatch(&agent, &mut workers, &mut seen, node, event).await,
                Some(Err(e)) => tracing::warn!(error = %e, "pod watch error"),
                None => break,
            },
        }
        workers.retain(|_, w| !(w.task.is_finished() && w.updates.is_closed()));
    }
    tracing::info!(
        pods = workers.len(),
        "shutting down: stopping every pod's containers"
    );
    for worker in workers.values() {
        worker.updates.send_replace(None);
    }
    let stopping = futures::future::join_all(workers.into_values().map(|w| w.task));
    let _ = tokio::time::timeout(Duration::from_secs(10), stopping).await;
    Ok(())
}

struct Worker {
    /// The Node whose watch the pod came from.
    node: u8,
    updates: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

async fn dispatch(
    agent: &Arc<Agent>,
    workers: &mut HashMap<String, Worker>,
    seen: &mut HashMap<u8, Vec<String>>,
    node: u8,
    event: WatchEvent<Pod>,
) {
    // Each Node has a watch of its own, and each re-lists on its own (after an API server
    // restart, say): what one Node's list did not show says nothing of another Node's pods.
    let seen = seen.entry(node).or_default();
    match event {
        WatchEvent::Init => seen.clear(),
        WatchEvent::InitDone => {
            // This Node's pods that vanished while its watch was down.
            for (uid, worker) in workers.iter() {
                if worker.node == node && !seen.contains(uid) {
                    worker.updates.send_replace(None);
                }
            }
        }
        WatchEvent::Apply(pod) | WatchEvent::InitApply(pod) => {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            seen.push(uid.clone());
            if let Some(worker) = workers.get(&uid) {
                worker.updates.send_replace(Some(pod));
                return;
            }
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded" | "Failed")) {
                return;
            }
            let (updates, rx) = watch::channel(Some(pod.clone()));
            let task = tokio::spawn(pod::run(agent.clone(), pod, node, rx));
            workers.insert(
                uid,
                Worker {
                    node,
                    updates,
                    task,
                },
            );
        }
        WatchEvent::Delete(pod) => {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if let Some(worker) = workers.remove(&uid) {
                worker.updates.send_replace(None);
                // Let it finish in the background; its containers stop at once.
                drop(worker.task);
            }
        }
    }
}

/// Creates (or takes over) Node `index` and reports it Ready.
async fn register_node(client: &Client, index: u8, max_pods: u32) -> Result<()> {
    let name = node_name(index);
    let nodes: Api<Node> = Api::all(client.clone());
    let labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("node.hotload.dev/agent", "process"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(node_pod_cidr(index)),
            pod_cidrs: Some(vec![node_pod_cidr(index)]),
            ..Default::default()
        }),
        ..Default::default()
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e).with_context(|| format!("registering node {name}")),
    }
    let status = node_status(index, max_pods);
    nodes
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .with_context(|| format!("reporting status of node {name}"))?;
    Ok(())
}

fn node_status(index: u8, max_pods: u32) -> NodeStatus {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .map(|v| v.trim().trim_end_matches(" kB").to_string())
            })
        })
        .unwrap_or_else(|| "0".into());
    let resources: BTreeMap<String, Quantity> = [
        ("cpu", cpus.to_string()),
        ("memory", format!("{memory_kib}Ki")),
        ("pods", max_pods.to_string()),
        ("ephemeral-storage", "100Gi".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect();
    let now = Some(Time(Timestamp::now()));
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: now.clone(),
        last_transition_time: now.clone(),
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(vec![
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "hotload node agent is posting ready status",
            ),
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "no memory pressure",
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "no disk pressure",
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "no PID pressure",
            ),
        ]),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: NODE_IP.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: node_name(index),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(kubelet_port(index)),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".into(),
            operating_system: "linux".into(),
            kernel_version: kernel.trim().into(),
            os_image: "hotload process node".into(),
            container_runtime_version: "hotload://0.1.0".into(),
            kubelet_version: KUBELET_VERSION.into(),
            kube_proxy_version: KUBELET_VERSION.into(),
            machine_id: format!("hotload-node-{index}"),
            system_uuid: format!("hotload-node-{index}"),
            boot_id: format!("hotload-node-{index}"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Kubernetes version the node agent reports (the control plane's).
pub const KUBELET_VERSION: &str = "v1.37.2";

/// Renews each Node's Lease every 10 s and its Ready condition every minute, as the kubelet.
async fn heartbeat(client: Client, nodes: Vec<String>) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let node_api: Api<Node> = Api::all(client.clone());
    let mut tick = 0u32;
    loop {
        for name in &nodes {
            let name = name.clone();
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.clone()),
                    lease_duration_seconds: Some(40),
                    renew_time: Some(MicroTime(Timestamp::now())),
                    ..Default::default()
                }),
            };
            let params = PatchParams::apply("hotload-node-agent").force();
            if let Err(e) = leases.patch(&name, &params, &Patch::Apply(&lease)).await {
                tracing::warn!(node = %name, error = %e, "lease renewal failed");
            }
            if tick % 6 == 5 {
                let heartbeat = serde_json::json!({"status": {"conditions": [{
                    "type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "hotload node agent is posting ready status",
                    "lastHeartbeatTime": Timestamp::now().to_string(),
                }]}});
                let _ = node_api
                    .patch_status(&name, &PatchParams::default(), &Patch::Strategic(heartbeat))
                    .await;
            }
        }
        tick = tick.wrapping_add(1);
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}
