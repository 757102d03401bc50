//! Where the local cluster keeps its state on disk, outside the checkout.
//!
//! ```text
//! $HOTLOAD_CACHE (default ~/.cache/hotload)/
//!   bin/current/            kube-apiserver, etcd, helm, … built by e2e/tools/build.sh
//!   cluster/
//!     pki/                  CA, serving and client certificates, service-account keys
//!     etcd/                 etcd's data directory
//!     logs/<component>.log  control-plane and node-agent output
//!     pids/<component>.pid  processes `cluster down` stops
//!     pods/<ns>_<name>_<uid>/ volumes, /etc/hosts and container logs of each pod
//!     kubeconfig            admin kubeconfig (client certificate in system:masters)
//!     images.json           container image → host binary map read by the node agent
//! ```

use std::path::{Path, PathBuf};

/// The on-disk layout of one local cluster.
#[derive(Clone, Debug)]
pub struct Layout {
    cache: PathBuf,
}

impl Layout {
    /// The layout under `$HOTLOAD_CACHE`, or `~/.cache/hotload` when it is unset.
    pub fn from_env() -> Self {
        let cache = std::env::var_os("HOTLOAD_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
                Path::new(&home).join(".cache/hotload")
            });
        Self { cache }
    }

    /// The cache root (binaries, cargo target, cluster state).
    pub fn cache(&self) -> &Path {
        &self.cache
    }

    /// The cluster's state directory.
    pub fn cluster(&self) -> PathBuf {
        self.cache.join("cluster")
    }

    /// Certificates and keys.
    pub fn pki(&self) -> PathBuf {
        self.cluster().join("pki")
    }

    /// etcd's data directory.
    pub fn etcd_data(&self) -> PathBuf {
        self.cluster().join("etcd")
    }

    /// Log files of the cluster's own processes.
    pub fn logs(&self) -> PathBuf {
        self.cluster().join("logs")
    }

    /// The log file of one component.
    pub fn log(&self, component: &str) -> PathBuf {
        self.logs().join(format!("{component}.log"))
    }

    /// Pid files of the cluster's own processes.
    pub fn pids(&self) -> PathBuf {
        self.cluster().join("pids")
    }

    /// Per-pod directories (volumes, hosts file, container logs).
    pub fn pods(&self) -> PathBuf {
        self.cluster().join("pods")
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.cluster().join("kubeconfig")
    }

    /// The image → binary map the node agent reads.
    pub fn images(&self) -> PathBuf {
        self.cluster().join("images.json")
    }

    /// A lock file serialising `cluster up` and `cluster down`.
    pub fn lock(&self) -> PathBuf {
        self.cache.join("cluster.lock")
    }
}
