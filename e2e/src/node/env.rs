//! A container's environment, by the kubelet's rules: Service links first, then `envFrom`,
//! then `env` (later entries win, and `$(VAR)` refers to anything defined before it).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::{Api, Client};

/// An environment under construction, in definition order.
pub type Env = Vec<(String, String)>;

/// Why a container's environment could not be built (kubelet: CreateContainerConfigError).
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A referenced ConfigMap or Secret, or a key in it, is missing and not optional.
    #[error("{kind} {name:?} {what}")]
    Missing {
        /// ConfigMap or Secret.
        kind: &'static str,
        /// The object's name.
        name: String,
        /// What is missing about it.
        what: String,
    },
    /// A fieldRef this node agent does not know.
    #[error("unsupported fieldRef {0:?}")]
    UnsupportedField(String),
    /// The API could not be read.
    #[error("reading {0}: {1}")]
    Api(String, kube::Error),
}

/// Pod facts a fieldRef can name.
#[derive(Clone, Debug, Default)]
pub struct PodFacts {
    /// status.podIP
    pub pod_ip: String,
    /// status.hostIP
    pub host_ip: String,
}

/// Builds the full environment of `container` in `pod`.
pub async fn container_env(
    client: &Client,
    pod: &Pod,
    container: &Container,
    services: &[Service],
    facts: &PodFacts,
) -> Result<Env, EnvError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let links = spec.and_then(|s| s.enable_service_links).unwrap_or(true);
    let mut env = service_links(&namespace, services, links);

    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        if let Some(cm) = &source.config_map_ref {
            let optional = cm.optional.unwrap_or(false);
            if let Some(data) = config_map(client, &namespace, &cm.name, optional).await? {
                env.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)));
            }
        }
        if let Some(secret) = &source.secret_ref {
            let optional = secret.optional.unwrap_or(false);
            if let Some(data) = secret_data(client, &namespace, &secret.name, optional).await? {
                env.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)));
            }
        }
    }

    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => Some(expand(var.value.as_deref().unwrap_or(""), &env)),
            Some(from) => {
                if let Some(field) = &from.field_ref {
                    Some(field_ref(pod, &field.field_path, facts)?)
                } else if let Some(key) = &from.config_map_key_ref {
                    let optional = key.optional.unwrap_or(false);
                    let data = config_map(client, &namespace, &key.name, optional).await?;
                    lookup(data, "ConfigMap", &key.name, &key.key, optional)?
                } else if let Some(key) = &from.secret_key_ref {
                    let optional = key.optional.unwrap_or(false);
                    let data = secret_data(client, &namespace, &key.name, optional).await?;
                    lookup(data, "Secret", &key.name, &key.key, optional)?
                } else {
                    from.resource_field_ref
                        .as_ref()
                        .map(|resource| resource_field(container, &resource.resource))
                }
            }
        };
        if let Some(value) = value {
            env.push((var.name.clone(), value));
        }
    }
    Ok(dedup(env))
}

/// Keeps the last definition of each name, in the order names were first defined.
fn dedup(env: Env) -> Env {
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut order = Vec::new();
    for (name, value) in env {
        if last.insert(name.clone(), value).is_none() {
            order.push(name);
        }
    }
    order
        .into_iter()
        .filter_map(|name| last.remove(&name).map(|value| (name, value)))
        .collect()
}

/// `{SVC}_SERVICE_HOST`/`_PORT` for the `kubernetes` Service always, and for every Service
/// of the pod's namespace when service links are on.
pub fn service_links(namespace: &str, services: &[Service], links: bool) -> Env {
    let mut env = Env::new();
    for service in services {
        let ns = service.metadata.namespace.as_deref().unwrap_or_default();
        let name = service.metadata.name.as_deref().unwrap_or_default();
        let is_api = ns == "default" && name == "kubernetes";
        if !(is_api || (links && ns == namespace)) {
            continue;
        }
        let Some(spec) = &service.spec else { continue };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| *ip != "None" && !ip.is_empty())
        else {
            continue;
        };
        let prefix = name.to_uppercase().replace('-', "_");
        env.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
        for (i, port) in spec.ports.iter().flatten().enumerate() {
            if i == 0 {
                env.push((format!("{prefix}_SERVICE_PORT"), port.port.to_string()));
            }
            if let Some(port_name) = &port.name {
                let port_name = port_name.to_uppercase().replace('-', "_");
                env.push((
                    format!("{prefix}_SERVICE_PORT_{port_name}"),
                    port.port.to_string(),
                ));
            }
        }
    }
    env
}

/// Expands `$(VAR)` from `env`; `$$` is a literal `$`; unknown references stay as written.
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(close) = inner.find(')')
        {
            let name = &inner[..close];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, value)) => out.push_str(value),
                None => out.push_str(&rest[at..at + 2 + close + 1]),
            }
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The value of a downward-API field path.
pub fn field_ref(pod: &Pod, path: &str, facts: &PodFacts) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_key = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix("']"))
            .map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        _ => {
            if let Some(key) = map_key("metadata.labels['") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&key))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(key) = map_key("metadata.annotations['") {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(&key))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(EnvError::UnsupportedField(path.to_string()));
            }
        }
    })
}

/// `limits.cpu` and friends: the limit if set, else the request, else "0".
fn resource_field(container: &Container, resource: &str) -> String {
    let (kind, name) = resource.split_once('.').unwrap_or(("limits", resource));
    let resources = container.resources.as_ref();
    let pick = |map: Option<
        &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| { map.and_then(|m| m.get(name)).map(|q| q.0.clone()) };
    let limits = resources.and_then(|r| r.limits.as_ref());
    let requests = resources.and_then(|r| r.requests.as_ref());
    match kind {
        "requests" => pick(requests),
        _ => pick(limits).or_else(|| pick(requests)),
    }
    .unwrap_or_else(|| "0".into())
}

fn lookup(
    data: Option<BTreeMap<String, String>>,
    kind: &'static str,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, EnvError> {
    match data.and_then(|mut d| d.remove(key)) {
        Some(value) => Ok(Some(value)),
        None if optional => Ok(None),
        None => Err(EnvError::Missing {
            kind,
            name: name.to_string(),
            what: format!("has no key {key:?}"),
        }),
    }
}

/// A ConfigMap's data (binary data as lossy UTF-8); `None` when optional and missing.
pub async fn config_map(
    client: &Client,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<Option<BTreeMap<String, String>>, EnvError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(cm)) => {
            let mut data = cm.data.unwrap_or_default();
            for (key, bytes) in cm.binary_data.unwrap_or_default() {
                data.insert(key, String::from_utf8_lossy(&bytes.0).into_owned());
            }
            Ok(Some(data))
        }
        Ok(None) if optional => Ok(None),
        Ok(None) => Err(EnvError::Missing {
            kind: "ConfigMap",
            name: name.to_string(),
            what: "not found".into(),
        }),
        Err(e) => Err(EnvError::Api(format!("ConfigMap {namespace}/{name}"), e)),
    }
}

/// A Secret's data as UTF-8 strings; `None` when optional and missing.
pub async fn secret_data(
    client: &Client,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<Option<BTreeMap<String, String>>, EnvError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(secret)) => {
            let mut data: BTreeMap<String, String> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect();
            data.extend(secret.string_data.unwrap_or_default());
            Ok(Some(data))
        }
        Ok(None) if optional => Ok(None),
        Ok(None) => Err(EnvError::Missing {
            kind: "Secret",
            name: name.to_string(),
            what: "not found".into(),
        }),
        Err(e) => Err(EnvError::Api(format!("Secret {namespace}/{name}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use kube::api::ObjectMeta;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expand_follows_kubernetes_rules() {
        let vars = env(&[("A", "1"), ("B", "two")]);
        assert_eq!(expand("x$(A)y$(B)", &vars), "x1ytwo");
        assert_eq!(expand("$(MISSING)", &vars), "$(MISSING)");
        assert_eq!(expand("$$(A) costs $5", &vars), "$(A) costs $5");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn later_definitions_win_but_keep_first_position() {
        let merged = dedup(env(&[("A", "1"), ("B", "2"), ("A", "3")]));
        assert_eq!(merged, env(&[("A", "3"), ("B", "2")]));
    }

    fn service(ns: &str, name: &str, ip: &str, ports: &[(Option<&str>, i32)]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p)| ServicePort {
                            name: n.map(Into::into),
                            port: *p,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn service_links_cover_the_apiserver_and_the_pods_namespace_only() {
        let services = [
            service(
                "default",
                "kubernetes",
                "198.19.0.1",
                &[(Some("https"), 443)],
            ),
            service(
                "shop",
                "web-api",
                "198.19.0.9",
                &[(Some("http"), 80), (None, 81)],
            ),
            service("other", "db", "198.19.0.7", &[(None, 5432)]),
            service("shop", "headless", "None", &[(None, 80)]),
        ];
        let links = service_links("shop", &services, true);
        assert!(links.contains(&("KUBERNETES_SERVICE_HOST".into(), "198.19.0.1".into())));
        assert!(links.contains(&("KUBERNETES_SERVICE_PORT".into(), "443".into())));
        assert!(links.contains(&("WEB_API_SERVICE_HOST".into(), "198.19.0.9".into())));
        assert!(links.contains(&("WEB_API_SERVICE_PORT_HTTP".into(), "80".into())));
        assert!(
            !links
                .iter()
                .any(|(k, _)| k.starts_with("DB_") || k.starts_with("HEADLESS_"))
        );
        let off = service_links("shop", &services, false);
        assert_eq!(
            off.len(),
            3,
            "only the apiserver when links are off: {off:?}"
        );
    }

    #[test]
    fn field_refs_read_metadata_and_facts() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web-1".into());
        pod.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        let facts = PodFacts {
            pod_ip: "198.18.16.2".into(),
            host_ip: "198.18.0.1".into(),
        };
        assert_eq!(field_ref(&pod, "metadata.name", &facts).unwrap(), "web-1");
        assert_eq!(
            field_ref(&pod, "status.podIP", &facts).unwrap(),
            "198.18.16.2"
        );
        assert_eq!(
            field_ref(&pod, "metadata.labels['app']", &facts).unwrap(),
            "web"
        );
        assert!(field_ref(&pod, "spec.bogus", &facts).is_err());
    }
}
