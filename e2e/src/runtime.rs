//! The two tiny process entry points the node agent runs its pods through. Each starts as a
//! fresh single-threaded process (the node agent execs its own binary), so entering
//! namespaces and mounting happen before any thread exists and before the real program is
//! exec'd in its place.
//!
//! - `sandbox`: the pod's "pause" process. It makes the pod's network, UTS and IPC
//!   namespaces and holds them open until it is killed; the namespaces vanish with it.
//! - `container-init`: joins the pod's cgroup and namespaces, makes a private mount
//!   namespace with the container's volume mounts, then execs the container's command.
//!   Its mounts die with the container's last process, so nothing is left to unmount.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};

use crate::cgroup;

/// Arguments of the `sandbox` entry point.
#[derive(Args, Debug)]
pub struct SandboxArgs {
    /// The pod's hostname (its name, as in Kubernetes).
    #[arg(long)]
    pub hostname: String,
    /// The pod's cgroup directory.
    #[arg(long)]
    pub cgroup: PathBuf,
}

/// Arguments of the `container-init` entry point.
#[derive(Args, Debug)]
pub struct ContainerInitArgs {
    /// The pod's sandbox process, whose namespaces the container joins.
    #[arg(long)]
    pub sandbox_pid: u32,
    /// The pod's cgroup directory.
    #[arg(long)]
    pub cgroup: PathBuf,
    /// A bind mount `SOURCE:TARGET[:ro]`; repeatable.
    #[arg(long = "mount")]
    pub mounts: Vec<String>,
    /// The working directory.
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    pub argv: Vec<String>,
}

/// One bind mount of a container.
#[derive(Debug, PartialEq, Eq)]
pub struct BindMount {
    /// Path on the host.
    pub source: PathBuf,
    /// Path the container sees.
    pub target: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

impl BindMount {
    /// The `--mount` argument form.
    pub fn to_arg(&self) -> String {
        let ro = if self.read_only { ":ro" } else { "" };
        format!("{}:{}{ro}", self.source.display(), self.target.display())
    }

    /// Parses the `--mount` argument form.
    pub fn parse(arg: &str) -> Result<Self> {
        let (rest, read_only) = match arg.strip_suffix(":ro") {
            Some(rest) => (rest, true),
            None => (arg, false),
        };
        let Some((source, target)) = rest.split_once(':') else {
            bail!("mount {arg:?} is not SOURCE:TARGET[:ro]");
        };
        Ok(Self {
            source: source.into(),
            target: target.into(),
            read_only,
        })
    }
}

/// Runs the sandbox: never returns while the pod lives.
pub fn sandbox(args: &SandboxArgs) -> Result<()> {
    cgroup::join(&args.cgroup, 0)?;
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC)
        .context("unsharing the pod's network, UTS and IPC namespaces")?;
    nix::unistd::sethostname(&args.hostname)
        .with_context(|| format!("setting hostname {}", args.hostname))?;
    // The node agent configures the network once it reads this line.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    loop {
        nix::unistd::pause();
    }
}

/// Enters the pod, mounts the container's volumes and execs its program.
pub fn container_init(args: &ContainerInitArgs) -> Result<()> {
    cgroup::join(&args.cgroup, 0)?;
    for (ns, flag) in [
        ("net", CloneFlags::CLONE_NEWNET),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("ipc", CloneFlags::CLONE_NEWIPC),
    ] {
        let path = format!("/proc/{}/ns/{ns}", args.sandbox_pid);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        setns(&file, flag).with_context(|| format!("joining {path}"))?;
    }
    unshare(CloneFlags::CLONE_NEWNS).context("unsharing the mount namespace")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making / private")?;
    for arg in &args.mounts {
        bind(&BindMount::parse(arg)?)?;
    }
    if let Some(dir) = &args.workdir {
        std::fs::create_dir_all(dir).ok();
        std::env::set_current_dir(dir)
            .with_context(|| format!("entering workdir {}", dir.display()))?;
    }
    let argv = args
        .argv
        .iter()
        .map(|arg| CString::new(arg.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .context("an argument holds a NUL byte")?;
    let program = argv.first().context("no program to run")?;
    let error = nix::unistd::execvp(program, &argv).unwrap_err();
    bail!("exec {}: {error}", args.argv[0])
}

fn bind(m: &BindMount) -> Result<()> {
    let context = || format!("mounting {} at {}", m.source.display(), m.target.display());
    ensure_target(&m.source, &m.target).with_context(context)?;
    mount(
        Some(&m.source),
        &m.target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(context)?;
    if m.read_only {
        mount(
            None::<&str>,
            &m.target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(context)?;
    }
    Ok(())
}

/// A bind mount needs its target to exist and be of the source's kind (file or directory).
fn ensure_target(source: &Path, target: &Path) -> Result<()> {
    if target.exists() {
        return Ok(());
    }
    if source.is_dir() {
        std::fs::create_dir_all(target)?;
    } else {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        File::create(target)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_args_round_trip() {
        let m = BindMount {
            source: "/cache/pods/a/volumes/token".into(),
            target: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
            read_only: true,
        };
        assert_eq!(BindMount::parse(&m.to_arg()).unwrap(), m);
        let rw = BindMount::parse("/a:/b").unwrap();
        assert!(!rw.read_only);
        assert!(BindMount::parse("/only-one-path").is_err());
    }
}
