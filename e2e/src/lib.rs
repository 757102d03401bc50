//! hotload-e2e: a real Kubernetes cluster on one machine without a container engine, and
//! the library the end-to-end tests use.
//!
//! - [`cluster`]: `cluster up/down/status` — etcd, kube-apiserver, kube-controller-manager,
//!   kube-scheduler and kube-proxy built from pinned Go modules (`e2e/tools/`), plus
//! - [`node`]: a node agent that registers Nodes and runs their pods' containers as
//!   processes, each pod in its own network and mount namespaces ([`runtime`]).
//! - [`testing`]: start or reuse the cluster, a namespace per test, wait helpers, and a
//!   dump of pods, events and logs when a test fails; [`artifacts`]: an HTTPS server that
//!   pods reach, for plugin artifacts; [`fleet`]: the chart, an artifact server and demo
//!   pods, driven as a user would; [`chaos`]: seeded random releases and faults on that
//!   fleet, with the invariants checked after every run.

pub mod argocd;
pub mod artifacts;
pub mod bench;
pub mod cgroup;
pub mod chaos;
pub mod chart;
pub mod cluster;
pub mod demo;
pub mod fleet;
pub mod gate;
pub mod images;
pub mod layout;
pub mod lock;
pub mod netplan;
pub mod node;
pub mod pki;
pub mod prometheus;
pub mod registry;
pub mod runtime;
pub mod sdk_apps;
pub mod testing;
pub mod testserver;
pub mod tls;
pub mod workload;
