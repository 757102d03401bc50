//! A pod's sandbox: the "pause" process holding its namespaces, and its routed veth link.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::netplan::{POD_GATEWAY, pod_link_name};

/// A running sandbox.
#[derive(Debug)]
pub struct Sandbox {
    /// The pause process, whose namespaces containers join.
    pub pid: u32,
    /// The pod's IP.
    pub ip: Ipv4Addr,
    /// The host-side veth.
    pub link: String,
    child: Child,
}

impl Sandbox {
    /// Starts the pause process and wires its network namespace to the node netns.
    pub async fn create(
        exe: &Path,
        hostname: &str,
        uid: &str,
        ip: Ipv4Addr,
        cgroup: &Path,
    ) -> Result<Self> {
        let mut child = Command::new(exe)
            .args(["sandbox", "--hostname", hostname, "--cgroup"])
            .arg(cgroup)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the sandbox process")?;
        let pid = child.id().context("sandbox process exited at once")?;
        let stdout = child.stdout.take().context("sandbox stdout")?;
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        let read = reader.read_line(&mut line);
        match tokio::time::timeout(Duration::from_secs(10), read).await {
            Ok(Ok(_)) if line.trim() == "ready" => {}
            _ => bail!("sandbox process {pid} did not come up (said {line:?})"),
        }
        let sandbox = Self {
            pid,
            ip,
            link: pod_link_name(uid),
            child,
        };
        sandbox.wire().await?;
        Ok(sandbox)
    }

    async fn wire(&self) -> Result<()> {
        let (link, pid) = (self.link.as_str(), self.pid.to_string());
        let gateway = POD_GATEWAY.to_string();
        run(
            "ip",
            &[
                "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", &pid,
            ],
        )
        .await?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{gateway}/32"),
                "dev",
                link,
                "scope",
                "link",
            ],
        )
        .await?;
        run("ip", &["link", "set", link, "up"]).await?;
        run(
            "ip",
            &["route", "add", &format!("{}/32", self.ip), "dev", link],
        )
        .await?;
        let inside = format!(
            "link set lo up\n\
             addr add {ip}/32 dev eth0\n\
             link set eth0 up\n\
             route add {gateway} dev eth0 scope link\n\
             route add default via {gateway} dev eth0\n",
            ip = self.ip
        );
        let netns = format!("--net=/proc/{pid}/ns/net");
        let mut ip = Command::new("nsenter")
            .args([netns.as_str(), "ip", "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running ip inside the pod netns")?;
        if let Some(mut stdin) = ip.stdin.take() {
            stdin.write_all(inside.as_bytes()).await?;
        }
        let out = ip.wait_with_output().await?;
        if !out.status.success() {
            bail!(
                "configuring the pod netns: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Kills the pause process (its namespaces and the pod end of the veth go with it) and
    /// removes the host end.
    pub async fn destroy(mut self) {
        let _ = self.child.kill().await;
        let _ = run("ip", &["link", "del", &self.link]).await;
    }
}

async fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
