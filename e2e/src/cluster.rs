//! `cluster up | down | status`: the real Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kube-proxy) and the node agent, each a process
//! in the node netns and in the cluster's cgroup, configured the way envtest and kubeadm do.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::ListParams;
use kube::{Api, Client};

use crate::images::{ImageMap, default_images};
use crate::layout::Layout;
use crate::netplan::{
    APISERVER_PORT, CLUSTER_CIDR, HOST_IP, HOST_LINK, NODE_IP, NODE_LINK, NODE_NETNS, SERVICE_CIDR,
    TEST_RANGE,
};
use crate::pki::{self, Pki};
use crate::{cgroup, lock};

/// Options of `cluster up`.
#[derive(clap::Args, Debug, Clone)]
pub struct UpOptions {
    /// How many Nodes the node agent registers.
    #[arg(long, default_value_t = 2)]
    pub nodes: u8,
    /// Pods each Node accepts (the scale benchmarks raise it).
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// Virtual Nodes whose pods run nothing (for the fleet-scale benchmarks).
    #[arg(long, default_value_t = 0)]
    pub virtual_nodes: u8,
    /// Extra image mappings `IMAGE=BINARY`, added to the built-in ones.
    #[arg(long = "image")]
    pub images: Vec<String>,
}

impl Default for UpOptions {
    fn default() -> Self {
        Self {
            nodes: 2,
            max_pods: 110,
            virtual_nodes: 0,
            images: Vec::new(),
        }
    }
}

/// The control-plane processes, in start order.
const COMPONENTS: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "node-agent",
];

/// Brings the cluster up (or finds it up and healthy) and returns its admin kubeconfig.
pub async fn up(layout: &Layout, options: &UpOptions) -> Result<PathBuf> {
    let _lock = lock::exclusive(&layout.lock())?;
    if healthy(layout).await {
        tracing::info!("cluster is already up");
        return Ok(layout.kubeconfig());
    }
    let started = Instant::now();
    teardown(layout)?;
    let bin = build_tools()?;
    std::fs::create_dir_all(layout.logs())?;
    std::fs::create_dir_all(layout.pids())?;
    std::fs::create_dir_all(layout.pods())?;

    let pki = Pki::new(layout.pki());
    pki.generate()?;
    std::fs::copy(pki.kubeconfig(&pki::ADMIN), layout.kubeconfig())?;
    image_map(options)?.save(&layout.images())?;
    create_network()?;

    // The apiserver first: the other components need its RBAC bootstrap policy in place.
    let (first, rest) = COMPONENTS.split_at(2);
    for component in first {
        let (program, args) = command_line(component, layout, &pki, &bin, options)?;
        spawn(layout, component, &program, &args)?;
    }
    let client = admin_client(layout).await?;
    wait_until(
        layout,
        "the apiserver to be ready",
        Duration::from_secs(90),
        || async { apiserver_ready(&client).await },
    )
    .await?;
    for component in rest {
        let (program, args) = command_line(component, layout, &pki, &bin, options)?;
        spawn(layout, component, &program, &args)?;
    }
    wait_until(
        layout,
        "the default ServiceAccount",
        Duration::from_secs(60),
        || async {
            let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
            matches!(accounts.get_opt("default").await, Ok(Some(_)))
        },
    )
    .await?;
    wait_until(
        layout,
        "every Node to be Ready",
        Duration::from_secs(60),
        || async { nodes_ready(&client, options.nodes + options.virtual_nodes).await },
    )
    .await?;
    wait_until(
        layout,
        "kube-proxy to sync",
        Duration::from_secs(60),
        || async {
            let url = format!("http://{NODE_IP}:10256/healthz");
            matches!(reqwest::get(&url).await, Ok(r) if r.status().is_success())
        },
    )
    .await?;
    tracing::info!(seconds = started.elapsed().as_secs_f32(), "cluster is up");
    Ok(layout.kubeconfig())
}

/// Stops every process of the cluster and removes its network, cgroups and state.
pub fn down(layout: &Layout) -> Result<()> {
    let _lock = lock::exclusive(&layout.lock())?;
    teardown(layout)
}

/// Restarts kube-apiserver as a crash would: `kill -9`, then the same command line again,
/// and waits (at most `timeout`) until it is ready. The cluster lock is held throughout, so
/// no `cluster up` meanwhile mistakes the pause for a dead cluster and tears it down.
/// Returns how long the API server was away.
pub async fn restart_apiserver(layout: &Layout, timeout: Duration) -> Result<Duration> {
    let path = layout.lock();
    let _lock = tokio::time::timeout(
        timeout,
        tokio::task::spawn_blocking(move || lock::exclusive(&path)),
    )
    .await
    .context("waiting for the cluster lock")???;
    let component = "kube-apiserver";
    let pid = read_pid(layout, component)
        .filter(|pid| alive(*pid))
        .context("kube-apiserver is not running")?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .with_context(|| format!("reading the command line of kube-apiserver ({pid})"))?;
    let mut argv = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned());
    let program = PathBuf::from(
        argv.next()
            .context("kube-apiserver has an empty command line")?,
    );
    let args: Vec<String> = argv.collect();
    anyhow::ensure!(
        program.ends_with(component),
        "pid {pid} runs {}, not kube-apiserver",
        program.display()
    );
    let client = admin_client(layout).await?;
    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !released(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(
        released(pid),
        "kube-apiserver ({pid}) outlived kill -9 by 10 s"
    );
    spawn(layout, component, &program, &args)?;
    wait_until(
        layout,
        "the restarted apiserver to be ready",
        timeout,
        || async { apiserver_ready(&client).await },
    )
    .await?;
    Ok(started.elapsed())
}

/// Whether a killed process has let go of everything it held (its listening port above
/// all): it is gone, or a zombie whose every thread has exited. The thread-group leader
/// turns zombie while its other threads may still be closing files, so "not alive" alone
/// is too early to bind its port again. A zombie this process spawned is reaped here.
fn released(pid: u32) -> bool {
    if let Ok(raw) = i32::try_from(pid) {
        // Only our own child can be reaped; for any other pid this fails harmlessly.
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(raw),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
    if alive(pid) {
        return false;
    }
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(true, |tasks| tasks.count() <= 1)
}

/// What of the cluster is left on the machine: processes, namespaces, links, mounts.
pub fn leftovers() -> Result<Vec<String>> {
    let mut found = Vec::new();
    let cgroup_root = cgroup::mount_point()?.join(cgroup::ROOT);
    if cgroup_root.exists() {
        found.push(format!("cgroup {}", cgroup_root.display()));
    }
    let netns = output("ip", &["netns", "list"])?;
    if netns.split_whitespace().any(|name| name == NODE_NETNS) {
        found.push(format!("network namespace {NODE_NETNS}"));
    }
    if Path::new("/sys/class/net").join(HOST_LINK).exists() {
        found.push(format!("link {HOST_LINK}"));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    found.extend(
        mounts
            .lines()
            .filter(|line| line.contains("hotload"))
            .map(|line| format!("mount {line}")),
    );
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("hotload/bin/") || cmdline.contains("hotload-e2e node-agent") {
            found.push(format!(
                "process {}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    Ok(found)
}

/// One line per component: running or not; then the Nodes.
pub async fn status(layout: &Layout) -> Result<String> {
    let mut report = String::new();
    for component in COMPONENTS {
        let state = match read_pid(layout, component) {
            Some(pid) if alive(pid) => format!("running (pid {pid})"),
            Some(pid) => format!("dead (pid {pid}); see {}", layout.log(component).display()),
            None => "not started".to_string(),
        };
        report.push_str(&format!("{component:<24} {state}\n"));
    }
    if let Ok(client) = admin_client(layout).await
        && let Ok(nodes) = Api::<Node>::all(client).list(&ListParams::default()).await
    {
        for node in nodes {
            let ready = crate::node::status::node_is_ready(&node);
            let name = node.metadata.name.unwrap_or_default();
            report.push_str(&format!(
                "node {name:<19} {}\n",
                if ready { "Ready" } else { "NotReady" }
            ));
        }
    }
    Ok(report)
}

/// A client with the admin identity.
pub async fn admin_client(layout: &Layout) -> Result<Client> {
    client_for(&layout.kubeconfig()).await
}

/// A client for a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> Result<Client> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(Client::try_from(config)?)
}

async fn healthy(layout: &Layout) -> bool {
    let all_alive = COMPONENTS
        .iter()
        .all(|c| read_pid(layout, c).is_some_and(alive));
    if !all_alive {
        return false;
    }
    // A rebuilt hotload-e2e means a stale node agent: start over with the new one.
    let agent_exe = read_pid(layout, "node-agent")
        .and_then(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok());
    if agent_exe.is_some_and(|exe| exe.to_string_lossy().ends_with(" (deleted)")) {
        tracing::info!("hotload-e2e was rebuilt; restarting the cluster");
        return false;
    }
    match admin_client(layout).await {
        Ok(client) => apiserver_ready(&client).await,
        Err(_) => false,
    }
}

async fn apiserver_ready(client: &Client) -> bool {
    let request = http::Request::get("/readyz").body(Vec::new());
    match request {
        Ok(request) => client
            .request_text(request)
            .await
            .is_ok_and(|body| body == "ok"),
        Err(_) => false,
    }
}

async fn nodes_ready(client: &Client, expected: u8) -> bool {
    let Ok(nodes) = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
    else {
        return false;
    };
    nodes
        .items
        .iter()
        .filter(|node| crate::node::status::node_is_ready(node))
        .count()
        >= usize::from(expected)
}

/// Polls `check` until it holds; fails early, with the log's tail, if a component died.
async fn wait_until<F, Fut>(layout: &Layout, what: &str, timeout: Duration, check: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        for component in COMPONENTS {
            if let Some(pid) = read_pid(layout, component)
                && !alive(pid)
            {
                bail!(
                    "waiting for {what}: {component} exited; last lines of {}:\n{}",
                    layout.log(component).display(),
                    tail(&layout.log(component), 30)
                );
            }
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs e2e/tools/build.sh (a stamp check when warm) and returns the bin directory.
fn build_tools() -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    let dir = String::from_utf8(out.stdout)?.trim().to_string();
    Ok(PathBuf::from(dir))
}

fn create_network() -> Result<()> {
    let node = NODE_NETNS;
    run("ip", &["netns", "add", node])?;
    run(
        "ip",
        &[
            "link", "add", HOST_LINK, "type", "veth", "peer", "name", NODE_LINK, "netns", node,
        ],
    )?;
    run(
        "ip",
        &["addr", "add", &format!("{HOST_IP}/30"), "dev", HOST_LINK],
    )?;
    run("ip", &["link", "set", HOST_LINK, "up"])?;
    run(
        "ip",
        &[
            "route",
            "add",
            TEST_RANGE,
            "via",
            &NODE_IP.to_string(),
            "dev",
            HOST_LINK,
        ],
    )?;
    run(
        "ip",
        &[
            "-n",
            node,
            "addr",
            "add",
            &format!("{NODE_IP}/30"),
            "dev",
            NODE_LINK,
        ],
    )?;
    run("ip", &["-n", node, "link", "set", NODE_LINK, "up"])?;
    run("ip", &["-n", node, "link", "set", "lo", "up"])?;
    // Forwarding is switched on in the node netns only; the machine's own stays as it was.
    run(
        "ip",
        &[
            "netns",
            "exec",
            node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
    )
}

fn teardown(layout: &Layout) -> Result<()> {
    if let Some(pid) = read_pid(layout, "node-agent")
        && alive(pid)
    {
        // Let the agent stop its pods' containers in order; the cgroup kill below is the backstop.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    cgroup::kill_all(Duration::from_secs(10))?;
    if output("ip", &["netns", "list"])?
        .split_whitespace()
        .any(|name| name == NODE_NETNS)
    {
        run("ip", &["netns", "del", NODE_NETNS])?;
    }
    // Deleting the netns destroys the veth pair, but the root end may linger a moment.
    if let Err(e) = run("ip", &["link", "del", HOST_LINK])
        && Path::new("/sys/class/net").join(HOST_LINK).exists()
    {
        return Err(e);
    }
    for dir in [
        layout.etcd_data(),
        layout.pods(),
        layout.pids(),
        layout.pki(),
    ] {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    Ok(())
}

/// The program and arguments of one component.
fn command_line(
    component: &str,
    layout: &Layout,
    pki: &Pki,
    bin: &Path,
    options: &UpOptions,
) -> Result<(PathBuf, Vec<String>)> {
    let p = |path: PathBuf| path.display().to_string();
    let tool = |name: &str| bin.join(name);
    let args: Vec<String> = match component {
        "etcd" => vec![
            "--name=hotload".into(),
            format!("--data-dir={}", p(layout.etcd_data())),
            "--listen-client-urls=http://127.0.0.1:2379".into(),
            "--advertise-client-urls=http://127.0.0.1:2379".into(),
            "--listen-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-cluster=hotload=http://127.0.0.1:2380".into(),
            // A throwaway test cluster: durability across power loss buys nothing here.
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ],
        "kube-apiserver" => vec![
            "--etcd-servers=http://127.0.0.1:2379".into(),
            format!("--bind-address={NODE_IP}"),
            format!("--advertise-address={NODE_IP}"),
            format!("--secure-port={APISERVER_PORT}"),
            format!("--cert-dir={}", p(layout.pki().join("apiserver-generated"))),
            format!("--tls-cert-file={}", p(pki.cert("apiserver"))),
            format!("--tls-private-key-file={}", p(pki.key("apiserver"))),
            format!("--client-ca-file={}", p(pki.ca())),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!(
                "--service-account-key-file={}",
                p(layout.pki().join("service-account.pub"))
            ),
            format!(
                "--service-account-signing-key-file={}",
                p(pki.key("service-account"))
            ),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--authorization-mode=RBAC".into(),
            "--allow-privileged=true".into(),
            // Webhook and aggregated-API Services resolve to endpoint IPs, which the
            // apiserver reaches directly from the node netns.
            "--enable-aggregator-routing=true".into(),
            format!(
                "--kubelet-client-certificate={}",
                p(pki.cert(pki::APISERVER_KUBELET_CLIENT.name))
            ),
            format!(
                "--kubelet-client-key={}",
                p(pki.key(pki::APISERVER_KUBELET_CLIENT.name))
            ),
            format!("--kubelet-certificate-authority={}", p(pki.ca())),
            "--kubelet-preferred-address-types=InternalIP".into(),
            "--profiling=false".into(),
        ],
        "kube-controller-manager" => {
            let kubeconfig = p(pki.kubeconfig(&pki::CONTROLLER_MANAGER));
            vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--bind-address=127.0.0.1".into(),
                "--leader-elect=false".into(),
                "--use-service-account-credentials=true".into(),
                format!(
                    "--service-account-private-key-file={}",
                    p(pki.key("service-account"))
                ),
                format!("--root-ca-file={}", p(pki.ca())),
                format!("--cluster-cidr={CLUSTER_CIDR}"),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--kube-api-qps=200".into(),
                "--kube-api-burst=400".into(),
            ]
        }
        "kube-scheduler" => {
            let kubeconfig = p(pki.kubeconfig(&pki::SCHEDULER));
            vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--bind-address=127.0.0.1".into(),
                "--leader-elect=false".into(),
            ]
        }
        "kube-proxy" => vec![
            format!("--kubeconfig={}", p(pki.kubeconfig(&pki::PROXY))),
            "--proxy-mode=nftables".into(),
            format!("--cluster-cidr={CLUSTER_CIDR}"),
            format!("--hostname-override={}", crate::node::node_name(0)),
            format!("--healthz-bind-address={NODE_IP}:10256"),
            "--metrics-bind-address=127.0.0.1:10249".into(),
            // Leave the kernel's conntrack table size alone (it is not ours to tune).
            "--conntrack-max-per-core=0".into(),
            // One kube-proxy serves every node (they share the node netns), but it treats
            // only its own node's endpoints as local and masquerades hairpin traffic (a pod
            // reaching itself through its Service) only for those. Masquerading all Service
            // traffic makes hairpin work for pods on every node.
            "--masquerade-all=true".into(),
        ],
        "node-agent" => {
            let exe = std::env::current_exe().context("locating hotload-e2e itself")?;
            let mut args = vec![
                "node-agent".to_string(),
                format!("--kubeconfig={}", p(pki.kubeconfig(&pki::NODE_AGENT))),
                format!("--nodes={}", options.nodes),
                format!("--max-pods={}", options.max_pods),
                format!("--virtual-nodes={}", options.virtual_nodes),
                format!("--state-dir={}", p(layout.cluster())),
                format!("--tls-cert={}", p(pki.cert("kubelet"))),
                format!("--tls-key={}", p(pki.key("kubelet"))),
                format!("--client-ca={}", p(pki.ca())),
            ];
            args.push("--log-json".into());
            return Ok((exe, args));
        }
        other => bail!("unknown component {other}"),
    };
    Ok((tool(component), args))
}

/// Starts `program` inside the node netns and the component's cgroup, detached, logging to
/// its log file. The shell joins the cgroup before exec, so no child can escape it. Only the
/// network namespace changes (`nsenter --net`, not `ip netns exec`, which would also remount
/// /sys and hide the cgroup filesystem the node agent needs).
fn spawn(layout: &Layout, component: &str, program: &Path, args: &[String]) -> Result<()> {
    let cgroup = cgroup::ensure(component)?;
    let log = File::create(layout.log(component))?;
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && exec nsenter "$@""#)
        .arg(&cgroup)
        .arg(format!("--net=/run/netns/{NODE_NETNS}"))
        .arg(program)
        .args(args)
        .env("PATH", crate::node::container_path())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {component} ({})", program.display()))?;
    std::fs::write(
        layout.pids().join(format!("{component}.pid")),
        child.id().to_string(),
    )?;
    Ok(())
}

fn read_pid(layout: &Layout, component: &str) -> Option<u32> {
    std::fs::read_to_string(layout.pids().join(format!("{component}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `command`; its stdout, or an error naming the program, its arguments and its stderr.
pub fn stdout_of(command: &mut Command) -> Result<String> {
    let program = Path::new(command.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let args: Vec<String> = command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let out = command
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    stdout_of(Command::new(program).args(args)).map(drop)
}

fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The images every cluster knows, plus the ones given on the command line.
pub fn image_map(options: &UpOptions) -> Result<ImageMap> {
    let mut images = default_images()?;
    for mapping in &options.images {
        images.add_mapping(mapping)?;
    }
    Ok(images)
}
