//! Materialises a pod's volumes as directories under its pod directory (an emptyDir is a
//! size-limited tmpfs, see [`super::emptydir`]); containers then bind-mount them. Files are
//! written to a temporary name and renamed into place, so a reader never sees half a file
//! (the kubelet uses an atomic `..data` symlink swap for the same reason).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, KeyToPath, Pod, ServiceAccount, Volume};
use kube::api::PostParams;
use kube::{Api, Client};

use super::env::{EnvError, PodFacts, config_map, field_ref, secret_data};

/// Why a volume could not be set up (kubelet: FailedMount).
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A source object is missing or unreadable.
    #[error("volume {volume:?}: {source}")]
    Source {
        /// The volume's name.
        volume: String,
        /// The cause.
        source: EnvError,
    },
    /// The TokenRequest for a projected service-account token failed.
    #[error("volume {volume:?}: requesting a token for ServiceAccount {account:?}: {source}")]
    Token {
        /// The volume's name.
        volume: String,
        /// The service account.
        account: String,
        /// The cause.
        source: kube::Error,
    },
    /// Writing the files failed.
    #[error("volume {volume:?}: writing {path}: {source}")]
    Io {
        /// The volume's name.
        volume: String,
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// An emptyDir's tmpfs could not be mounted.
    #[error("volume {volume:?}: {reason}")]
    Mount {
        /// The volume's name.
        volume: String,
        /// Why.
        reason: String,
    },
    /// A volume type this node agent does not provide.
    #[error(
        "volume {0:?}: unsupported volume type (emptyDir, configMap, secret, projected, downwardAPI and hostPath are)"
    )]
    Unsupported(String),
}

/// A projected service-account token the pod worker must refresh before it expires.
#[derive(Clone, Debug)]
pub struct TokenFile {
    /// Where the token is written.
    pub path: PathBuf,
    /// The token's audience (empty: the apiserver's).
    pub audience: Option<String>,
    /// Requested lifetime.
    pub expiration_seconds: i64,
}

/// The host directories of a pod's volumes, and the tokens to keep fresh.
#[derive(Debug, Default)]
pub struct PodVolumes {
    /// Volume name → host path.
    pub paths: BTreeMap<String, PathBuf>,
    /// Projected tokens.
    pub tokens: Vec<TokenFile>,
}

/// Writes every volume of `pod` below `dir`.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    dir: &Path,
    facts: &PodFacts,
) -> Result<PodVolumes, VolumeError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = PodVolumes::default();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let name = volume.name.clone();
        let path = if let Some(host) = &volume.host_path {
            let path = PathBuf::from(&host.path);
            if host.type_.as_deref() == Some("DirectoryOrCreate") {
                mkdir(&name, &path)?;
            }
            path
        } else {
            let path = dir.join(&name);
            mkdir(&name, &path)?;
            write_volume(
                client,
                pod,
                &namespace,
                volume,
                &path,
                facts,
                &mut out.tokens,
            )
            .await?;
            path
        };
        out.paths.insert(name, path);
    }
    Ok(out)
}

async fn write_volume(
    client: &Client,
    pod: &Pod,
    namespace: &str,
    volume: &Volume,
    path: &Path,
    facts: &PodFacts,
    tokens: &mut Vec<TokenFile>,
) -> Result<(), VolumeError> {
    let name = &volume.name;
    let source = |source| VolumeError::Source {
        volume: name.clone(),
        source,
    };
    if let Some(empty_dir) = &volume.empty_dir {
        return super::emptydir::mount_tmpfs(path, empty_dir).map_err(|reason| {
            VolumeError::Mount {
                volume: name.clone(),
                reason,
            }
        });
    }
    if let Some(cm) = &volume.config_map {
        let data = config_map(client, namespace, &cm.name, cm.optional.unwrap_or(false))
            .await
            .map_err(source)?
            .unwrap_or_default();
        return write_keys(name, path, &data, cm.items.as_deref(), cm.default_mode);
    }
    if let Some(secret) = &volume.secret {
        let secret_name = secret.secret_name.clone().unwrap_or_default();
        let data = secret_data(
            client,
            namespace,
            &secret_name,
            secret.optional.unwrap_or(false),
        )
        .await
        .map_err(source)?
        .unwrap_or_default();
        return write_keys(
            name,
            path,
            &data,
            secret.items.as_deref(),
            secret.default_mode,
        );
    }
    if let Some(downward) = &volume.downward_api {
        return write_downward(
            name,
            path,
            pod,
            downward.items.as_deref().unwrap_or_default(),
            facts,
        );
    }
    if let Some(projected) = &volume.projected {
        for item in projected.sources.iter().flatten() {
            if let Some(token) = &item.service_account_token {
                let file = TokenFile {
                    path: path.join(&token.path),
                    audience: token.audience.clone(),
                    expiration_seconds: token.expiration_seconds.unwrap_or(3600),
                };
                refresh_token(client, pod, &file)
                    .await
                    .map_err(|e| VolumeError::Token {
                        volume: name.clone(),
                        account: service_account(pod),
                        source: e,
                    })?;
                tokens.push(file);
            }
            if let Some(cm) = &item.config_map {
                let data = config_map(client, namespace, &cm.name, cm.optional.unwrap_or(false))
                    .await
                    .map_err(source)?
                    .unwrap_or_default();
                write_keys(
                    name,
                    path,
                    &data,
                    cm.items.as_deref(),
                    projected.default_mode,
                )?;
            }
            if let Some(secret) = &item.secret {
                let data = secret_data(
                    client,
                    namespace,
                    &secret.name,
                    secret.optional.unwrap_or(false),
                )
                .await
                .map_err(source)?
                .unwrap_or_default();
                write_keys(
                    name,
                    path,
                    &data,
                    secret.items.as_deref(),
                    projected.default_mode,
                )?;
            }
            if let Some(downward) = &item.downward_api {
                write_downward(
                    name,
                    path,
                    pod,
                    downward.items.as_deref().unwrap_or_default(),
                    facts,
                )?;
            }
        }
        return Ok(());
    }
    Err(VolumeError::Unsupported(name.clone()))
}

/// Requests a pod-bound token (TokenRequest API) and writes it to the token file.
pub async fn refresh_token(
    client: &Client,
    pod: &Pod,
    file: &TokenFile,
) -> Result<(), kube::Error> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: file.audience.clone().map(|a| vec![a]),
            expiration_seconds: Some(file.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let issued: TokenRequest = accounts
        .create_subresource(
            "token",
            &service_account(pod),
            &PostParams::default(),
            &request,
        )
        .await?;
    let token = issued.status.and_then(|s| s.token).unwrap_or_default();
    atomic_write(&file.path, token.as_bytes(), 0o600)
        .map_err(|e| kube::Error::Service(format!("writing {}: {e}", file.path.display()).into()))
}

fn service_account(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into())
}

fn write_keys(
    volume: &str,
    dir: &Path,
    data: &BTreeMap<String, String>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
) -> Result<(), VolumeError> {
    let mode = |m: Option<i32>| m.or(default_mode).unwrap_or(0o644) as u32;
    let files: Vec<(String, &String, u32)> = match items {
        Some(items) => items
            .iter()
            .filter_map(|item| {
                data.get(&item.key)
                    .map(|v| (item.path.clone(), v, mode(item.mode)))
            })
            .collect(),
        None => data
            .iter()
            .map(|(k, v)| (k.clone(), v, mode(None)))
            .collect(),
    };
    for (relative, value, mode) in files {
        let path = dir.join(relative);
        atomic_write(&path, value.as_bytes(), mode).map_err(|source| VolumeError::Io {
            volume: volume.to_string(),
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

fn write_downward(
    volume: &str,
    dir: &Path,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    facts: &PodFacts,
) -> Result<(), VolumeError> {
    for item in items {
        let Some(field) = &item.field_ref else {
            continue;
        };
        let value =
            field_ref(pod, &field.field_path, facts).map_err(|source| VolumeError::Source {
                volume: volume.to_string(),
                source,
            })?;
        let path = dir.join(&item.path);
        atomic_write(&path, value.as_bytes(), item.mode.unwrap_or(0o644) as u32).map_err(
            |source| VolumeError::Io {
                volume: volume.to_string(),
                path: path.display().to_string(),
                source,
            },
        )?;
    }
    Ok(())
}

fn mkdir(volume: &str, path: &Path) -> Result<(), VolumeError> {
    std::fs::create_dir_all(path).map_err(|source| VolumeError::Io {
        volume: volume.to_string(),
        path: path.display().to_string(),
        source,
    })
}

/// Writes `path` through a temporary sibling and a rename.
pub fn atomic_write(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("hotload-tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)
}
