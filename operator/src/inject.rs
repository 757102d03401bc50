//! Sidecar injection, decided: given a pod and the injection settings, the pod as it should
//! be created. The webhook ([`crate::webhook`]) turns the difference into a JSON patch.
//!
//! What a pod gets (the same spec README's "by hand" section shows):
//! - `hotload-sidecar` as the first init container with `restartPolicy: Always` (a native
//!   sidecar: it starts before the app and outlives it), readiness on its admin port, and
//!   its readiness policy in its arguments: `--readiness=plugins` (the pod is not Ready until
//!   the operator has sent its complete set and every worker loaded it) unless the pod's
//!   `hotload.dev/readiness: always` annotation opts out;
//! - volumes: `hotload` (emptyDir for artifacts and the app socket, unless the pod brings
//!   its own), `hotload-token` (a projected service-account token for the
//!   `hotload.dev/channel` audience), and `hotload-ca-bundle` when the pod names a ConfigMap
//!   of artifact-server CAs in the `hotload.dev/ca-bundle` annotation;
//! - every app container mounts `hotload` at `/var/run/hotload` and gets
//!   `HOTLOAD_APP_SOCKET`;
//! - the operator's CA inline in `HOTLOAD_OPERATOR_CA_PEM`, because a pod can only mount
//!   ConfigMaps of its own namespace.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EnvVar, Pod, ResourceRequirements, SecurityContext, VolumeMount,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Pod label: `true` opts a pod in, `false` keeps it out of an opted-in namespace.
pub const INJECT_LABEL: &str = "hotload.dev/inject";
/// Pod annotation: a ConfigMap (key `ca.crt`) of CAs the sidecar trusts for artifacts.
pub const CA_BUNDLE_ANNOTATION: &str = "hotload.dev/ca-bundle";
/// Pod annotation: `always` makes the sidecar Ready whatever its plugins do (for apps that
/// serve without them); `plugins`, the default, keeps the pod not Ready until they load.
pub const READINESS_ANNOTATION: &str = "hotload.dev/readiness";
/// Pod annotation the webhook sets: the sidecar image it injected.
pub const INJECTED_ANNOTATION: &str = "hotload.dev/injected";
/// The injected container's name.
pub const SIDECAR_NAME: &str = "hotload-sidecar";
/// Where the shared volume is mounted, in every container.
pub const STATE_DIR: &str = "/var/run/hotload";
/// The shared volume's name.
pub const STATE_VOLUME: &str = "hotload";
const TOKEN_VOLUME: &str = "hotload-token";
const TOKEN_DIR: &str = "/var/run/secrets/hotload";
const CA_BUNDLE_VOLUME: &str = "hotload-ca-bundle";
const CA_BUNDLE_DIR: &str = "/etc/hotload/ca-bundle";

/// How to inject, from the chart's values (`--inject-config`, JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InjectConfig {
    /// The sidecar image.
    pub image: String,
    /// Its pull policy.
    #[serde(default = "if_not_present")]
    pub image_pull_policy: String,
    /// The operator's channel, `https://<service>.<namespace>.svc:<port>`.
    pub operator_addr: String,
    /// The sidecar's admin port (`/ready`, `/live`, `/status`).
    #[serde(default = "admin_port")]
    pub admin_port: u16,
    /// Extra `hotload-sidecar run` arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// The sidecar's resources.
    #[serde(default)]
    pub resources: Option<ResourceRequirements>,
    /// The sidecar's security context.
    #[serde(default)]
    pub security_context: Option<SecurityContext>,
    /// Lifetime of the projected channel token.
    #[serde(default = "token_seconds")]
    pub token_expiration_seconds: i64,
}

fn if_not_present() -> String {
    "IfNotPresent".into()
}
fn admin_port() -> u16 {
    9901
}
fn token_seconds() -> i64 {
    3600
}

/// When the injected sidecar reports its pod Ready (its `--readiness` argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Once the operator has sent the pod's complete set (`Synced`) and every assigned
    /// plugin is loaded by every worker: the pod takes traffic only with its plugins.
    Plugins,
    /// Always: the app serves without its plugins, or gates readiness itself.
    Always,
}

impl Readiness {
    /// The policy a pod asks for with [`READINESS_ANNOTATION`] (none: [`Readiness::Plugins`]),
    /// or why its value is refused.
    pub fn of(pod: &Pod) -> Result<Self, String> {
        let asked = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(READINESS_ANNOTATION));
        match asked.map(String::as_str) {
            None | Some("plugins") => Ok(Readiness::Plugins),
            Some("always") => Ok(Readiness::Always),
            Some(other) => Err(format!(
                "annotation {READINESS_ANNOTATION} is {other:?}; it must be \"always\" (Ready \
                 whether or not its plugins are loaded) or \"plugins\" (the default: not Ready \
                 until they are)"
            )),
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Readiness::Plugins => "--readiness=plugins",
            Readiness::Always => "--readiness=always",
        }
    }
}

/// The pod with the sidecar; `Ok(None)` when it has one already (injected before, or
/// written by hand) or opted out; `Err` with the reason when the pod asks for something
/// that cannot be injected (the webhook refuses it). `ca_pem` is the operator's CA.
pub fn inject(pod: &Pod, config: &InjectConfig, ca_pem: &str) -> Result<Option<Pod>, String> {
    let labels = pod.metadata.labels.as_ref();
    if labels.and_then(|l| l.get(INJECT_LABEL)).map(String::as_str) == Some("false") {
        return Ok(None);
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(None);
    };
    let has_sidecar = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == SIDECAR_NAME);
    if has_sidecar {
        return Ok(None);
    }
    let readiness = Readiness::of(pod)?;
    let ca_bundle = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CA_BUNDLE_ANNOTATION))
        .filter(|name| !name.is_empty());

    let mut pod = pod.clone();
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(INJECTED_ANNOTATION.into(), config.image.clone());
    let Some(spec) = pod.spec.as_mut() else {
        return Ok(None);
    };

    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    if !volumes.iter().any(|v| v.name == STATE_VOLUME) {
        volumes.push(from_json(json!({"name": STATE_VOLUME, "emptyDir": {}})));
    }
    volumes.push(from_json(
        json!({"name": TOKEN_VOLUME, "projected": {"sources": [
        {"serviceAccountToken": {"audience": hotload_channel::TOKEN_AUDIENCE,
                                 "expirationSeconds": config.token_expiration_seconds,
                                 "path": "token"}}]}}),
    ));
    if let Some(name) = ca_bundle {
        volumes.push(from_json(
            json!({"name": CA_BUNDLE_VOLUME, "configMap": {"name": name}}),
        ));
    }

    let socket = format!("{STATE_DIR}/app.sock");
    for container in &mut spec.containers {
        let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
        let mounted = mounts
            .iter()
            .any(|m| m.name == STATE_VOLUME || m.mount_path == STATE_DIR);
        if !mounted {
            mounts.push(mount(STATE_VOLUME, STATE_DIR, false));
        }
        let env = container.env.get_or_insert_with(Vec::new);
        if !env.iter().any(|e| e.name == "HOTLOAD_APP_SOCKET") {
            env.push(EnvVar {
                name: "HOTLOAD_APP_SOCKET".into(),
                value: Some(socket.clone()),
                ..Default::default()
            });
        }
    }

    let sidecar = sidecar(config, ca_pem, ca_bundle.is_some(), readiness);
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .insert(0, sidecar);
    Ok(Some(pod))
}

fn sidecar(
    config: &InjectConfig,
    ca_pem: &str,
    ca_bundle: bool,
    readiness: Readiness,
) -> Container {
    let mut args = vec![
        "run".to_string(),
        format!("--state-dir={STATE_DIR}"),
        format!("--admin-addr=0.0.0.0:{}", config.admin_port),
        format!("--operator-addr={}", config.operator_addr),
        format!("--token-file={TOKEN_DIR}/token"),
        readiness.arg().to_string(),
    ];
    let mut mounts = vec![
        mount(STATE_VOLUME, STATE_DIR, false),
        mount(TOKEN_VOLUME, TOKEN_DIR, true),
    ];
    if ca_bundle {
        args.push(format!("--ca-bundle={CA_BUNDLE_DIR}/ca.crt"));
        mounts.push(mount(CA_BUNDLE_VOLUME, CA_BUNDLE_DIR, true));
    }
    args.extend(config.args.iter().cloned());
    let field = |name: &str, path: &str| -> EnvVar {
        from_json(json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}))
    };
    let probe = |path: &str| {
        from_json(json!({"httpGet": {"path": path, "port": config.admin_port},
                         "periodSeconds": 2, "failureThreshold": 3}))
    };
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(config.image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        restart_policy: Some("Always".into()),
        args: Some(args),
        env: Some(vec![
            field("POD_NAME", "metadata.name"),
            field("POD_NAMESPACE", "metadata.namespace"),
            EnvVar {
                name: "HOTLOAD_OPERATOR_CA_PEM".into(),
                value: Some(ca_pem.to_string()),
                ..Default::default()
            },
        ]),
        volume_mounts: Some(mounts),
        readiness_probe: Some(probe("/ready")),
        liveness_probe: Some(probe("/live")),
        resources: config.resources.clone(),
        security_context: config.security_context.clone(),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// Builds a k8s-openapi value from JSON this module writes itself (a literal, never input).
fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("a literal Kubernetes object")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> InjectConfig {
        serde_json::from_value(json!({
            "image": "hotload/sidecar:1.0",
            "operatorAddr": "https://hotload.hotload-system.svc:8443",
            "args": ["--attempts=2"],
        }))
        .unwrap()
    }

    fn pod(labels: serde_json::Value, annotations: serde_json::Value) -> Pod {
        from_json(json!({
            "metadata": {"generateName": "web-", "labels": labels, "annotations": annotations},
            "spec": {"containers": [
                {"name": "app", "image": "shop/web:1", "env": [{"name": "A", "value": "1"}]},
                {"name": "logger", "image": "shop/log:1",
                 "volumeMounts": [{"name": "logs", "mountPath": "/var/log"}]},
            ], "volumes": [{"name": "logs", "emptyDir": {}}]},
        }))
    }

    #[test]
    fn injects_a_native_sidecar_with_token_volume_and_ca() {
        let injected = inject(&pod(json!({"app": "web"}), json!({})), &config(), "CA PEM")
            .unwrap()
            .unwrap();
        let spec = injected.spec.as_ref().unwrap();
        let sidecar = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(sidecar.name, SIDECAR_NAME);
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        assert_eq!(sidecar.image.as_deref(), Some("hotload/sidecar:1.0"));
        let args = sidecar.args.as_ref().unwrap();
        assert!(args.contains(&"--operator-addr=https://hotload.hotload-system.svc:8443".into()));
        assert!(args.contains(&"--token-file=/var/run/secrets/hotload/token".into()));
        assert!(
            args.contains(&"--readiness=plugins".into()),
            "readiness waits for the plugins by default: {args:?}"
        );
        assert_eq!(
            args.last().unwrap(),
            "--attempts=2",
            "extra args come last: {args:?}"
        );
        assert!(!args.iter().any(|a| a.starts_with("--ca-bundle")));
        let env = sidecar.env.as_ref().unwrap();
        let ca = env
            .iter()
            .find(|e| e.name == "HOTLOAD_OPERATOR_CA_PEM")
            .unwrap();
        assert_eq!(ca.value.as_deref(), Some("CA PEM"));
        assert!(
            env.iter()
                .any(|e| e.name == "POD_NAME" && e.value_from.is_some())
        );

        let volumes = spec.volumes.as_ref().unwrap();
        let names: Vec<_> = volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["logs", "hotload", "hotload-token"]);
        let token = volumes[2]
            .projected
            .as_ref()
            .unwrap()
            .sources
            .as_ref()
            .unwrap()[0]
            .service_account_token
            .as_ref()
            .unwrap();
        assert_eq!(
            token.audience.as_deref(),
            Some(hotload_channel::TOKEN_AUDIENCE)
        );

        for container in &spec.containers {
            let mounts = container.volume_mounts.as_ref().unwrap();
            assert!(
                mounts
                    .iter()
                    .any(|m| m.name == "hotload" && m.mount_path == STATE_DIR)
            );
            let env = container.env.as_ref().unwrap();
            assert!(env.iter().any(|e| e.name == "HOTLOAD_APP_SOCKET"
                && e.value.as_deref() == Some("/var/run/hotload/app.sock")));
        }
        assert_eq!(
            spec.containers[0].env.as_ref().unwrap()[0].name,
            "A",
            "app env kept"
        );
        let annotations = injected.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[INJECTED_ANNOTATION], "hotload/sidecar:1.0");
    }

    #[test]
    fn a_ca_bundle_annotation_mounts_that_configmap() {
        let injected = inject(
            &pod(json!({}), json!({CA_BUNDLE_ANNOTATION: "artifact-ca"})),
            &config(),
            "CA",
        )
        .unwrap()
        .unwrap();
        let spec = injected.spec.unwrap();
        let volume = spec
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == CA_BUNDLE_VOLUME)
            .unwrap();
        assert_eq!(volume.config_map.unwrap().name, "artifact-ca");
        let sidecar = &spec.init_containers.unwrap()[0];
        assert!(
            sidecar
                .args
                .as_ref()
                .unwrap()
                .contains(&"--ca-bundle=/etc/hotload/ca-bundle/ca.crt".into())
        );
    }

    #[test]
    fn opted_out_or_already_injected_pods_are_left_alone() {
        let out = pod(json!({INJECT_LABEL: "false"}), json!({}));
        assert_eq!(inject(&out, &config(), "CA"), Ok(None));
        let once = inject(&pod(json!({}), json!({})), &config(), "CA")
            .unwrap()
            .unwrap();
        assert_eq!(
            inject(&once, &config(), "CA"),
            Ok(None),
            "injection is idempotent"
        );
    }

    #[test]
    fn a_pod_bringing_its_own_hotload_volume_keeps_it() {
        let mut own = pod(json!({}), json!({}));
        let spec = own.spec.as_mut().unwrap();
        spec.volumes.as_mut().unwrap().push(from_json(
            json!({"name": "hotload", "emptyDir": {"medium": "Memory"}}),
        ));
        let injected = inject(&own, &config(), "CA").unwrap().unwrap();
        let volumes = injected.spec.unwrap().volumes.unwrap();
        let state: Vec<_> = volumes.iter().filter(|v| v.name == STATE_VOLUME).collect();
        assert_eq!(state.len(), 1);
        assert_eq!(
            state[0].empty_dir.as_ref().unwrap().medium.as_deref(),
            Some("Memory")
        );
    }

    fn readiness_args(annotations: serde_json::Value) -> Vec<String> {
        let injected = inject(&pod(json!({}), annotations), &config(), "CA")
            .unwrap()
            .unwrap();
        let sidecar = &injected.spec.unwrap().init_containers.unwrap()[0];
        sidecar
            .args
            .iter()
            .flatten()
            .filter(|a| a.starts_with("--readiness"))
            .cloned()
            .collect()
    }

    #[test]
    fn the_readiness_annotation_chooses_the_sidecars_policy() {
        assert_eq!(readiness_args(json!({})), ["--readiness=plugins"]);
        assert_eq!(
            readiness_args(json!({READINESS_ANNOTATION: "plugins"})),
            ["--readiness=plugins"]
        );
        assert_eq!(
            readiness_args(json!({READINESS_ANNOTATION: "always"})),
            ["--readiness=always"]
        );
    }

    #[test]
    fn another_readiness_value_is_refused_with_the_value() {
        let odd = pod(json!({}), json!({READINESS_ANNOTATION: "Always "}));
        let why = inject(&odd, &config(), "CA").unwrap_err();
        assert!(
            why.starts_with(
                "annotation hotload.dev/readiness is \"Always \"; it must be \"always\""
            ),
            "{why}"
        );
        // A pod that gets no sidecar is not the webhook's business.
        let out = pod(
            json!({INJECT_LABEL: "false"}),
            json!({READINESS_ANNOTATION: "never"}),
        );
        assert_eq!(inject(&out, &config(), "CA"), Ok(None));
    }

    #[test]
    fn config_rejects_unknown_fields_by_name() {
        let err = serde_json::from_value::<InjectConfig>(
            json!({"image": "x", "operatorAddr": "y", "imagePullPolcy": "Always"}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("imagePullPolcy"), "{err}");
    }
}
