//! The cluster's address plan. Every address lives in 198.18.0.0/15 (RFC 2544's benchmarking
//! range), inside network namespaces this crate creates; nothing points outside the machine.
//!
//! ```text
//!  root netns                      netns "hotload" (the node host)               pod netns
//!  hotload0 198.18.0.2/30 ─veth─ uplink0 198.18.0.1/30  (apiserver, etcd,
//!  route 198.18.0.0/15 via .0.1         controller-manager, scheduler,
//!                                       kube-proxy, node agent)
//!                                 hl<uid> 169.254.1.1/32 ───────veth────── eth0 198.18.16.7/32
//!                                 route 198.18.16.7/32 dev hl<uid>          default via 169.254.1.1
//! ```
//! Pods are routed, not bridged (one /32 per pod, as Calico does), so every packet between
//! pods crosses the node netns and kube-proxy's nftables rules see it, hairpin included.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// The network namespace that plays the node host.
pub const NODE_NETNS: &str = "hotload";
/// The root-namespace end of the link into the node netns.
pub const HOST_LINK: &str = "hotload0";
/// The node-netns end of that link.
pub const NODE_LINK: &str = "uplink0";
/// The node host's address: apiserver advertise address, node InternalIP.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The root namespace's address on the link (where tests and kubectl run).
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The whole test range, routed from the root namespace into the node netns.
pub const TEST_RANGE: &str = "198.18.0.0/15";
/// Pod addresses: node `i` owns 198.18.(16+i).0/24.
pub const CLUSTER_CIDR: &str = "198.18.16.0/20";
/// ClusterIP range; the `kubernetes` Service gets its first address.
pub const SERVICE_CIDR: &str = "198.19.0.0/16";
/// The link-local gateway every pod routes through (held by each pod's host-side veth).
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// How many nodes one cluster may register (the /20 holds sixteen /24s).
pub const MAX_NODES: u8 = 16;
/// The apiserver's secure port.
pub const APISERVER_PORT: u16 = 6443;
/// Node `i` serves the kubelet API on this port plus `i`.
pub const KUBELET_PORT_BASE: u16 = 10250;

/// The pod CIDR of node `index`.
pub fn node_pod_cidr(index: u8) -> String {
    format!("198.18.{}.0/24", 16 + u16::from(index))
}

/// The kubelet API port of node `index`.
pub fn kubelet_port(index: u8) -> u16 {
    KUBELET_PORT_BASE + u16::from(index)
}

/// The host-side veth name of a pod: unique per pod uid and within IFNAMSIZ (15 bytes).
pub fn pod_link_name(pod_uid: &str) -> String {
    let hex: String = pod_uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    format!("hl{hex}")
}

/// Hands out pod addresses from one node's /24, lowest free first.
#[derive(Debug)]
pub struct PodIpPool {
    third_octet: u8,
    used: BTreeSet<u8>,
}

impl PodIpPool {
    /// The pool of node `index`.
    pub fn new(index: u8) -> Self {
        Self {
            third_octet: 16 + index,
            used: BTreeSet::new(),
        }
    }

    /// Takes the lowest free address (.2 to .254; .1 stays unused like a gateway would).
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let free = (2..=254).find(|host| !self.used.contains(host))?;
        self.used.insert(free);
        Some(Ipv4Addr::new(198, 18, self.third_octet, free))
    }

    /// Returns an address to the pool.
    pub fn release(&mut self, ip: Ipv4Addr) {
        let [_, _, third, host] = ip.octets();
        if third == self.third_octet {
            self.used.remove(&host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_get_disjoint_pod_cidrs_inside_the_cluster_cidr() {
        assert_eq!(node_pod_cidr(0), "198.18.16.0/24");
        assert_eq!(node_pod_cidr(MAX_NODES - 1), "198.18.31.0/24");
    }

    #[test]
    fn pool_reuses_released_addresses_and_runs_dry_at_253() {
        let mut pool = PodIpPool::new(1);
        let first = pool.allocate();
        assert_eq!(first, Some(Ipv4Addr::new(198, 18, 17, 2)));
        assert_eq!(pool.allocate(), Some(Ipv4Addr::new(198, 18, 17, 3)));
        pool.release(Ipv4Addr::new(198, 18, 17, 2));
        assert_eq!(pool.allocate(), first);
        let rest = std::iter::from_fn(|| pool.allocate()).count();
        assert_eq!(rest, 253 - 2);
    }

    #[test]
    fn link_names_fit_ifnamsiz_and_differ_per_pod() {
        let a = pod_link_name("0f3c2a9e-51b7-4c1d-9a0e-1d2c3b4a5f60");
        let b = pod_link_name("7a3c2a9e-51b7-4c1d-9a0e-1d2c3b4a5f60");
        assert!(a.len() <= 15, "{a}");
        assert_ne!(a, b);
    }
}
