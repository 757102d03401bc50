//! Name resolution inside pods: each pod gets its own `/etc/hosts` listing every Service's
//! ClusterIP under the names cluster DNS would answer (`name`, `name.ns`, `name.ns.svc`,
//! `name.ns.svc.cluster.local`; the bare name only within the pod's namespace), and a
//! `resolv.conf` with no nameserver, so no lookup ever leaves the machine.

use k8s_openapi::api::core::v1::Service;

/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The pod's `/etc/hosts`.
pub fn render_hosts(pod_name: &str, pod_ip: &str, namespace: &str, services: &[Service]) -> String {
    let mut out = format!(
        "# Kubernetes-managed hosts file (hotload node agent).\n\
         127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{pod_ip}\t{pod_name}\n"
    );
    let mut entries: Vec<(String, String)> = services
        .iter()
        .filter_map(|service| {
            let name = service.metadata.name.as_deref()?;
            let ns = service.metadata.namespace.as_deref()?;
            let ip = service.spec.as_ref()?.cluster_ip.as_deref()?;
            if ip.is_empty() || ip == "None" {
                return None;
            }
            let mut names = vec![
                format!("{name}.{ns}.svc.{CLUSTER_DOMAIN}"),
                format!("{name}.{ns}.svc"),
                format!("{name}.{ns}"),
            ];
            if ns == namespace {
                names.push(name.to_string());
            }
            Some((ip.to_string(), names.join(" ")))
        })
        .collect();
    entries.sort();
    for (ip, names) in entries {
        out.push_str(&format!("{ip}\t{names}\n"));
    }
    out
}

/// The pod's `/etc/resolv.conf`: search domains as in a real cluster, and no nameserver.
pub fn render_resolv_conf(namespace: &str) -> String {
    format!(
        "search {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n\
         options ndots:5 timeout:1 attempts:1\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;
    use kube::api::ObjectMeta;

    fn service(ns: &str, name: &str, ip: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn short_names_only_within_the_namespace() {
        let services = [
            service("shop", "web", "198.19.0.10"),
            service("infra", "db", "198.19.0.11"),
            service("shop", "headless", "None"),
        ];
        let hosts = render_hosts("web-1", "198.18.16.5", "shop", &services);
        assert!(hosts.contains("198.18.16.5\tweb-1\n"));
        assert!(
            hosts.contains("198.19.0.10\tweb.shop.svc.cluster.local web.shop.svc web.shop web\n")
        );
        assert!(hosts.contains("198.19.0.11\tdb.infra.svc.cluster.local db.infra.svc db.infra\n"));
        assert!(!hosts.contains("headless"));
    }
}
