//! The local cluster behaves like Kubernetes where Hotload depends on it: Deployments,
//! Services, restarts, probes, graceful termination, service-account tokens, logs.
//! Each test runs in its own namespace on the real control plane (see `hotload_e2e::testing`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hotload_e2e::images::TESTSERVER_IMAGE;
use hotload_e2e::testing::{
    self, TestNamespace, container_pid, eventually, http_get, http_post, process_alive,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const E2E: &str = env!("CARGO_BIN_EXE_hotload-e2e");
const WAIT: Duration = Duration::from_secs(60);

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("test manifest is valid")
}

/// A Deployment of the test server with a 1 s readiness probe on /ready.
fn deployment(name: &str, replicas: i32, args: &[&str]) -> Deployment {
    from_json(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "server",
                    "image": TESTSERVER_IMAGE,
                    "args": std::iter::once("testserver").chain(args.iter().copied()).collect::<Vec<_>>(),
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {
                        "httpGet": {"path": "/ready", "port": "http"},
                        "periodSeconds": 1, "failureThreshold": 1,
                    },
                }]},
            },
        },
    }))
}

fn service(name: &str) -> Service {
    from_json(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }))
}

async fn create<K>(api: &Api<K>, object: &K) -> Result<K>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.create(&PostParams::default(), object)
        .await
        .context("creating test object")
}

/// Waits until the Deployment has exactly `n` pods, all ready, and returns them.
async fn ready_pods(ns: &TestNamespace, app: &str, n: usize) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = ns.api();
    eventually(&format!("{n} ready pods of {app}"), WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await?;
        let ready: Vec<Pod> = list.items.into_iter().filter(is_ready).collect();
        let all = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await?
            .items
            .len();
        ensure!(
            ready.len() == n && all == n,
            "{} of {all} pods ready, want {n}",
            ready.len()
        );
        Ok(ready)
    })
    .await
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && hotload_e2e::chart::is_ready(pod)
}

fn pod_ip(pod: &Pod) -> Result<String> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("pod has no IP")
}

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// The pid of the pod's first container.
fn pid(pod: &Pod) -> Result<u32> {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.container_id.as_deref())
        .and_then(container_pid)
        .context("container has no hotload:// container ID")
}

async fn cluster_ip(ns: &TestNamespace, service: &str) -> Result<String> {
    let services: Api<Service> = ns.api();
    services
        .get(service)
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("service has no ClusterIP")
}

async fn scale(ns: &TestNamespace, name: &str, replicas: i32) -> Result<()> {
    let deployments: Api<Deployment> = ns.api();
    let patch = json!({"spec": {"replicas": replicas}});
    deployments
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[tokio::test]
async fn deployment_answers_on_pod_ips_and_service_and_scales() {
    testing::run(E2E, "deploy", |ns| async move {
        create(&ns.api(), &deployment("web", 3, &[])).await?;
        create(&ns.api(), &service("web")).await?;
        let pods = ready_pods(&ns, "web", 3).await?;

        for pod in &pods {
            let body = http_get(&format!("http://{}:8080/", pod_ip(pod)?)).await?;
            ensure!(
                body == format!("hello from {}\n", name(pod)),
                "pod {} answered {body:?}",
                name(pod)
            );
        }

        // kube-proxy programs the Service a moment after the endpoints change.
        let ip = cluster_ip(&ns, "web").await?;
        let names: BTreeSet<String> = pods.iter().map(name).collect();
        eventually(
            "the Service to spread requests over its pods",
            WAIT,
            || async {
                let mut answered = BTreeSet::new();
                for _ in 0..20 {
                    let body = http_get(&format!("http://{ip}/")).await?;
                    let who = body.trim().trim_start_matches("hello from ").to_string();
                    ensure!(
                        names.contains(&who),
                        "service answered from unknown pod {who:?}"
                    );
                    answered.insert(who);
                }
                ensure!(
                    answered.len() >= 2,
                    "20 requests through the Service all went to {answered:?}"
                );
                Ok(())
            },
        )
        .await?;

        // Inside a pod, the Service's names resolve (through the pod's /etc/hosts).
        let first_ip = pod_ip(&pods[0])?;
        for host in ["web", &format!("web.{}.svc.cluster.local", ns.name)] {
            let url = format!("http://{first_ip}:8080/fetch?url=http://{host}/");
            let body = http_get(&url).await?;
            ensure!(
                body.starts_with("hello from "),
                "fetch of http://{host}/ from a pod: {body:?}"
            );
        }

        // kubectl sees what a user expects.
        let wide = ns.kubectl(&["get", "pods", "-o", "wide"])?;
        for pod in &pods {
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            ensure!(
                wide.contains(&pod_ip(pod)?) && wide.contains(&node),
                "kubectl get pods -o wide:\n{wide}"
            );
        }
        let log = ns.kubectl(&["logs", &name(&pods[0])])?;
        ensure!(
            log.contains("listening on 0.0.0.0:8080"),
            "kubectl logs: {log:?}"
        );

        // Scaling starts and stops real processes.
        scale(&ns, "web", 5).await?;
        let five = ready_pods(&ns, "web", 5).await?;
        let pids: Vec<u32> = five.iter().map(pid).collect::<Result<_>>()?;
        ensure!(
            pids.iter().all(|p| process_alive(*p)),
            "not every pod's process is alive: {pids:?}"
        );
        ensure!(
            pids.iter().collect::<BTreeSet<_>>().len() == 5,
            "pids are not distinct: {pids:?}"
        );

        scale(&ns, "web", 2).await?;
        let two = ready_pods(&ns, "web", 2).await?;
        let kept: BTreeSet<String> = two.iter().map(name).collect();
        let stopped: Vec<u32> = five
            .iter()
            .filter(|p| !kept.contains(&name(p)))
            .map(pid)
            .collect::<Result<_>>()?;
        eventually("the scaled-down pods' processes to exit", WAIT, || async {
            let alive: Vec<&u32> = stopped.iter().filter(|p| process_alive(**p)).collect();
            ensure!(alive.is_empty(), "still alive: {alive:?}");
            Ok(())
        })
        .await
    })
    .await;
}

#[tokio::test]
async fn exiting_container_restarts_with_backoff() {
    testing::run(E2E, "crash", |ns| async move {
        let pod: Pod = from_json(json!({
            "metadata": {"name": "crasher"},
            "spec": {"containers": [{
                "name": "server",
                "image": TESTSERVER_IMAGE,
                "args": ["testserver", "--exit-after", "0.5", "--exit-code", "3"],
            }]},
        }));
        let pods: Api<Pod> = ns.api();
        create(&pods, &pod).await?;
        let created = Instant::now();
        // restartCount reaching 1, 2 and 3, measured from the pod's creation.
        let mut seen_at: Vec<Duration> = Vec::new();
        let mut saw_backoff = false;
        let deadline = Instant::now() + Duration::from_secs(90);
        while seen_at.len() < 3 {
            ensure!(
                Instant::now() < deadline,
                "restartCount did not reach 3 (reached {})",
                seen_at.len()
            );
            let status = pods.get("crasher").await?.status.unwrap_or_default();
            let container = status
                .container_statuses
                .unwrap_or_default()
                .into_iter()
                .next();
            if let Some(c) = container {
                let waiting = c
                    .state
                    .as_ref()
                    .and_then(|s| s.waiting.as_ref())
                    .and_then(|w| w.reason.clone());
                saw_backoff |= waiting.as_deref() == Some("CrashLoopBackOff");
                while seen_at.len() < c.restart_count as usize {
                    seen_at.push(created.elapsed());
                }
                if c.restart_count >= 1 {
                    let exit = c.last_state.and_then(|s| s.terminated).map(|t| t.exit_code);
                    ensure!(exit == Some(3), "last state exit code {exit:?}, want 3");
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        ensure!(
            saw_backoff,
            "never saw the container waiting in CrashLoopBackOff"
        );
        // The kubelet restarts at once the first time, then after 10 s, then 20 s.
        let gaps = [seen_at[0], seen_at[1] - seen_at[0], seen_at[2] - seen_at[1]];
        ensure!(
            gaps[0] < Duration::from_secs(5)
                && gaps[1] >= Duration::from_secs(9)
                && gaps[2] >= gaps[1] + Duration::from_secs(5),
            "restarts came after {gaps:?}; want immediate, then ~10 s, then ~20 s"
        );
        let events: Api<Event> = ns.api();
        let list = events.list(&ListParams::default()).await?;
        ensure!(
            list.items
                .iter()
                .any(|e| e.reason.as_deref() == Some("BackOff")),
            "no BackOff event was recorded"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn failing_readiness_takes_the_pod_out_of_the_service() {
    testing::run(E2E, "ready", |ns| async move {
        create(&ns.api(), &deployment("web", 2, &[])).await?;
        create(&ns.api(), &service("web")).await?;
        let pods = ready_pods(&ns, "web", 2).await?;
        let (sick, healthy) = (&pods[0], &pods[1]);
        let slices: Api<EndpointSlice> = ns.api();
        let ready_ips = || async {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                .await?;
            let ips: BTreeSet<String> = list
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter().flatten())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
                .flat_map(|e| e.addresses.iter().cloned())
                .collect();
            Ok::<_, anyhow::Error>(ips)
        };
        eventually("both pods in the Service's endpoints", WAIT, || async {
            let ips = ready_ips().await?;
            ensure!(ips.len() == 2, "ready endpoints {ips:?}");
            Ok(())
        })
        .await?;

        http_post(&format!("http://{}:8080/ready/fail", pod_ip(sick)?)).await?;
        eventually("the failing pod to leave the endpoints", WAIT, || async {
            let ips = ready_ips().await?;
            ensure!(
                ips == BTreeSet::from([pod_ip(healthy)?]),
                "ready endpoints {ips:?}"
            );
            Ok(())
        })
        .await?;
        let pod: Api<Pod> = ns.api();
        ensure!(
            !is_ready(&pod.get(&name(sick)).await?),
            "pod still reports Ready"
        );
        let ip = cluster_ip(&ns, "web").await?;
        // kube-proxy reprograms the Service a moment after the endpoints change.
        eventually(
            "the Service to route only to the ready pod",
            WAIT,
            || async {
                for _ in 0..20 {
                    let body = http_get(&format!("http://{ip}/")).await?;
                    ensure!(
                        body.contains(&name(healthy)),
                        "service routed to the unready pod: {body:?}"
                    );
                }
                Ok(())
            },
        )
        .await?;

        http_post(&format!("http://{}:8080/ready/ok", pod_ip(sick)?)).await?;
        eventually("the pod to come back", WAIT, || async {
            let ips = ready_ips().await?;
            ensure!(ips.len() == 2, "ready endpoints {ips:?}");
            Ok(())
        })
        .await
    })
    .await;
}

#[tokio::test]
async fn deleted_pod_terminates_gracefully_and_is_replaced() {
    testing::run(E2E, "graceful", |ns| async move {
        let signals = std::env::temp_dir().join(format!("hotload-e2e-{}", ns.name));
        std::fs::create_dir_all(&signals)?;
        let mut deploy = deployment(
            "web",
            1,
            &["--sigterm-file", "/signals/log", "--shutdown-delay", "1"],
        );
        let spec = deploy.spec.template.spec.as_mut().context("pod spec")?;
        spec.termination_grace_period_seconds = Some(10);
        spec.volumes = Some(vec![from_json(
            json!({"name": "signals", "hostPath": {"path": signals}}),
        )]);
        spec.containers[0].volume_mounts = Some(vec![from_json(
            json!({"name": "signals", "mountPath": "/signals"}),
        )]);
        create(&ns.api(), &deploy).await?;
        let first = ready_pods(&ns, "web", 1).await?.remove(0);
        let first_pid = pid(&first)?;

        let pods: Api<Pod> = ns.api();
        pods.delete(&name(&first), &DeleteParams::default()).await?;
        eventually("the old pod object to be gone", WAIT, || async {
            ensure!(pods.get_opt(&name(&first)).await?.is_none(), "still there");
            Ok(())
        })
        .await?;
        let log = std::fs::read_to_string(signals.join("log")).unwrap_or_default();
        std::fs::remove_dir_all(&signals).ok();
        ensure!(
            log.contains(&format!("sigterm {}", name(&first))),
            "the container never handled SIGTERM (signal file: {log:?})"
        );
        ensure!(
            log.contains(&format!("drained {}", name(&first))),
            "the container was killed before its drain ended (signal file: {log:?})"
        );
        ensure!(
            !process_alive(first_pid),
            "the old container's process {first_pid} is still alive"
        );
        let replacement = ready_pods(&ns, "web", 1).await?.remove(0);
        ensure!(name(&replacement) != name(&first), "no replacement pod");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn projected_token_gets_exactly_what_rbac_allows() {
    testing::run(E2E, "token", |ns| async move {
        let n = ns.name.clone();
        create(&ns.api::<ServiceAccount>(), &from_json(json!({"metadata": {"name": "reader"}}))).await?;
        create(
            &ns.api::<Role>(),
            &from_json(json!({
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
            })),
        )
        .await?;
        create(
            &ns.api::<RoleBinding>(),
            &from_json(json!({
                "metadata": {"name": "reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": n}],
            })),
        )
        .await?;
        let mut reader = deployment("reader", 1, &[]);
        if let Some(spec) = reader.spec.template.spec.as_mut() {
            spec.service_account_name = Some("reader".into());
        }
        create(&ns.api(), &reader).await?;
        create(&ns.api(), &deployment("nobody", 1, &[])).await?;
        let reader_ip = pod_ip(&ready_pods(&ns, "reader", 1).await?[0])?;
        let nobody_ip = pod_ip(&ready_pods(&ns, "nobody", 1).await?[0])?;

        let status = |ip: String, path: String| async move {
            let body = http_get(&format!("http://{ip}:8080/kube?path={path}")).await?;
            Ok::<_, anyhow::Error>(body.trim().to_string())
        };
        let pods_path = format!("/api/v1/namespaces/{n}/pods");
        for (who, ip, path, want) in [
            ("reader", &reader_ip, pods_path.clone(), "200"),
            ("reader", &reader_ip, format!("/api/v1/namespaces/{n}/secrets"), "403"),
            ("reader", &reader_ip, "/api/v1/namespaces/kube-system/pods".to_string(), "403"),
            ("default", &nobody_ip, pods_path.clone(), "403"),
        ] {
            let got = status(ip.clone(), path.clone()).await?;
            if got != want {
                bail!("{who} account GET {path}: got {got}, want {want}");
            }
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn unknown_image_is_reported_not_fatal() {
    testing::run(E2E, "image", |ns| async move {
        let pods: Api<Pod> = ns.api();
        let bad: Pod = from_json(json!({
            "metadata": {"name": "bad"},
            "spec": {"containers": [{"name": "app", "image": "registry.example/nope:1"}]},
        }));
        create(&pods, &bad).await?;
        eventually("ErrImagePull on the pod", WAIT, || async {
            let status = pods.get("bad").await?.status.unwrap_or_default();
            let waiting = status
                .container_statuses
                .unwrap_or_default()
                .into_iter()
                .find_map(|c| c.state.and_then(|s| s.waiting));
            let reason = waiting.as_ref().and_then(|w| w.reason.clone());
            let message = waiting.and_then(|w| w.message).unwrap_or_default();
            ensure!(
                reason.as_deref() == Some("ErrImagePull"),
                "waiting reason {reason:?}"
            );
            ensure!(
                message.contains("registry.example/nope:1"),
                "message {message:?}"
            );
            Ok(())
        })
        .await?;
        let events: Api<Event> = ns.api();
        eventually("an ErrImagePull event", WAIT, || async {
            let list = events.list(&ListParams::default()).await?;
            ensure!(
                list.items
                    .iter()
                    .any(|e| e.reason.as_deref() == Some("ErrImagePull")),
                "none yet"
            );
            Ok(())
        })
        .await?;
        // The node agent carries on: a good pod next to it still runs.
        create(&ns.api(), &deployment("fine", 1, &[])).await?;
        ready_pods(&ns, "fine", 1).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn init_containers_native_sidecars_volumes_and_env() {
    testing::run(E2E, "sidecar", |ns| async move {
        let signals = std::env::temp_dir().join(format!("hotload-e2e-{}", ns.name));
        std::fs::create_dir_all(&signals)?;
        create(
            &ns.api::<k8s_openapi::api::core::v1::ConfigMap>(),
            &from_json(json!({"metadata": {"name": "cfg"}, "data": {"greeting": "hi"}})),
        )
        .await?;
        let server = |name: &str, port: u16| {
            json!({
                "name": name,
                "image": TESTSERVER_IMAGE,
                "args": ["testserver", "--port", port.to_string(), "--sigterm-file", "/signals/log"],
                "volumeMounts": [
                    {"name": "signals", "mountPath": "/signals"},
                    {"name": "shared", "mountPath": "/shared"},
                ],
            })
        };
        let mut side = server("side", 9090);
        side["restartPolicy"] = json!("Always");
        side["startupProbe"] = json!({"httpGet": {"path": "/healthz", "port": 9090}, "periodSeconds": 1});
        let mut app = server("app", 8080);
        app["env"] = json!([
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
            {"name": "MESSAGE", "value": "$(GREETING) from $(POD_NAME)"},
        ]);
        app["volumeMounts"].as_array_mut().context("mounts")?.extend([
            json!({"name": "cfg", "mountPath": "/etc/cfg", "readOnly": true}),
            json!({"name": "meta", "mountPath": "/etc/meta"}),
        ]);
        app["readinessProbe"] = json!({"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1});
        let pod: Pod = from_json(json!({
            "metadata": {"name": "layered", "labels": {"tier": "demo"}},
            "spec": {
                "terminationGracePeriodSeconds": 10,
                "volumes": [
                    {"name": "signals", "hostPath": {"path": signals}},
                    {"name": "shared", "emptyDir": {}},
                    {"name": "cfg", "configMap": {"name": "cfg"}},
                    {"name": "meta", "downwardAPI": {"items": [
                        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels['tier']"}},
                    ]}},
                ],
                "initContainers": [
                    {"name": "setup", "image": TESTSERVER_IMAGE,
                     "command": ["sh", "-c", "echo init-done > /shared/init"],
                     "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]},
                    side,
                ],
                "containers": [app],
            },
        }));
        let pods: Api<Pod> = ns.api();
        create(&pods, &pod).await?;
        let pod = eventually("the pod to be Ready", WAIT, || async {
            let pod = pods.get("layered").await?;
            ensure!(is_ready(&pod), "not ready yet");
            Ok(pod)
        })
        .await?;
        let ip = pod_ip(&pod)?;
        let get = |path: &str| {
            let url = format!("http://{ip}:8080{path}");
            async move { http_get(&url).await }
        };
        ensure!(get("/file?path=/shared/init").await? == "init-done\n", "init container output missing");
        ensure!(get("/file?path=/etc/cfg/greeting").await? == "hi", "configMap volume");
        ensure!(get("/file?path=/etc/meta/labels").await? == "demo", "downwardAPI volume");
        ensure!(get("/env?name=MESSAGE").await? == "hi from layered", "env expansion");
        let sa_ns = get("/file?path=/var/run/secrets/kubernetes.io/serviceaccount/namespace").await?;
        ensure!(sa_ns == ns.name, "service-account namespace file says {sa_ns:?}");
        // The sidecar shares the pod's network namespace and hostname.
        let side_says = http_get(&format!("http://{ip}:9090/")).await?;
        ensure!(side_says == "hello from layered\n", "sidecar answered {side_says:?}");

        let inits = pod.status.clone().unwrap_or_default().init_container_statuses.unwrap_or_default();
        let setup = inits.iter().find(|c| c.name == "setup").context("setup status")?;
        let exit = setup.state.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| t.exit_code);
        ensure!(exit == Some(0), "init container state {:?}", setup.state);
        let sidecar = inits.iter().find(|c| c.name == "side").context("sidecar status")?;
        ensure!(
            sidecar.started == Some(true) && sidecar.state.as_ref().is_some_and(|s| s.running.is_some()),
            "sidecar state {:?}",
            sidecar.state
        );

        // Deletion stops the app first and the sidecar last.
        pods.delete("layered", &DeleteParams::default()).await?;
        eventually("the pod to be gone", WAIT, || async {
            ensure!(pods.get_opt("layered").await?.is_none(), "still there");
            Ok(())
        })
        .await?;
        let log = std::fs::read_to_string(signals.join("log")).unwrap_or_default();
        std::fs::remove_dir_all(&signals).ok();
        // The sidecar is signalled only once the app has drained and exited.
        ensure!(
            log == "sigterm layered 8080\ndrained layered 8080\nsigterm layered 9090\ndrained layered 9090\n",
            "termination order (app, then sidecar) not kept: {log:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn failing_liveness_probe_restarts_the_container() {
    testing::run(E2E, "liveness", |ns| async move {
        let pod: Pod = from_json(json!({
            "metadata": {"name": "sick"},
            "spec": {"containers": [{
                "name": "server",
                "image": TESTSERVER_IMAGE,
                "args": ["testserver", "--healthy-for", "2"],
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                                  "periodSeconds": 1, "failureThreshold": 2},
            }]},
        }));
        let pods: Api<Pod> = ns.api();
        create(&pods, &pod).await?;
        eventually("a liveness restart", WAIT, || async {
            let status = pods.get("sick").await?.status.unwrap_or_default();
            let restarts = status
                .container_statuses
                .unwrap_or_default()
                .first()
                .map_or(0, |c| c.restart_count);
            ensure!(restarts >= 1, "restartCount {restarts}");
            Ok(())
        })
        .await?;
        let events: Api<Event> = ns.api();
        let list = events.list(&ListParams::default()).await?;
        let unhealthy = |e: &Event| {
            e.reason.as_deref() == Some("Unhealthy")
                && e.message
                    .as_deref()
                    .unwrap_or_default()
                    .contains("Liveness probe failed")
        };
        ensure!(
            list.items.iter().any(unhealthy),
            "no Unhealthy event for the liveness probe"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn apiserver_calls_an_in_cluster_admission_webhook() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    testing::run(E2E, "webhook", |ns| async move {
        let n = ns.name.clone();
        // A CA and a serving certificate for the webhook Service's DNS name.
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate()?;
        let leaf = rcgen::CertificateParams::new(vec![format!("hook.{n}.svc")])?
            .signed_by(&key, &issuer)?;
        let tls: Secret = from_json(json!({"metadata": {"name": "hook-tls"},
            "stringData": {"tls.crt": leaf.pem(), "tls.key": key.serialize_pem()}}));
        create(&ns.api(), &tls).await?;
        let mut hook = deployment(
            "hook",
            1,
            &["--tls-cert", "/tls/tls.crt", "--tls-key", "/tls/tls.key"],
        );
        let spec = hook.spec.template.spec.as_mut().context("pod spec")?;
        spec.volumes = Some(vec![from_json(
            json!({"name": "tls", "secret": {"secretName": "hook-tls"}}),
        )]);
        spec.containers[0].volume_mounts =
            Some(vec![from_json(json!({"name": "tls", "mountPath": "/tls"}))]);
        create(&ns.api(), &hook).await?;
        let svc: Service = from_json(json!({"metadata": {"name": "hook"},
            "spec": {"selector": {"app": "hook"}, "ports": [{"port": 443, "targetPort": 8443}]}}));
        create(&ns.api(), &svc).await?;
        ready_pods(&ns, "hook", 1).await?;

        let config_name = format!("e2e-{n}");
        let webhooks: Api<MutatingWebhookConfiguration> = Api::all(ns.client.clone());
        let config: MutatingWebhookConfiguration = from_json(json!({
            "metadata": {"name": config_name},
            "webhooks": [{
                "name": "label.hotload.dev",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "clientConfig": {
                    "service": {"namespace": n, "name": "hook", "path": "/mutate"},
                    "caBundle": k8s_openapi::ByteString(ca_cert.pem().into_bytes()),
                },
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": n}},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["configmaps"]}],
            }],
        }));
        webhooks.create(&PostParams::default(), &config).await?;
        let mut attempt = 0;
        let outcome = eventually("the webhook to label a new ConfigMap", WAIT, || {
            attempt += 1;
            let configmaps: Api<ConfigMap> = ns.api();
            async move {
                let probe: ConfigMap =
                    from_json(json!({"metadata": {"name": format!("probe-{attempt}")}}));
                let created = create(&configmaps, &probe).await?;
                let label = created
                    .metadata
                    .labels
                    .unwrap_or_default()
                    .get("hotload.dev/mutated")
                    .cloned();
                ensure!(
                    label.as_deref() == Some("true"),
                    "labels were not mutated: {label:?}"
                );
                Ok(())
            }
        })
        .await;
        webhooks
            .delete(&config_name, &DeleteParams::default())
            .await?;
        outcome
    })
    .await;
}
