//! Registry credentials from a release's pull secret. Pods need no RBAC, so the sidecar
//! cannot read Secrets itself; the operator reads the one the release names and sends the
//! credentials for the artifact's host with the assignment, over the TLS channel.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;

/// A username and password for the artifact's registry or HTTPS host.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password, not even in debug logs.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    username: Option<String>,
    password: Option<String>,
    auth: Option<String>,
}

/// The host (and port) of an `oci://host[:port]/repo…` or `https://host[:port]/path` URL.
pub fn host_of(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("oci://")
        .or_else(|| url.strip_prefix("https://"))?;
    rest.split('/').next().filter(|h| !h.is_empty())
}

/// The annotation on a Secret with `username`/`password` keys that lists the hosts
/// (`host[:port]`, comma-separated) the credentials may be sent to.
pub const HOSTS_ANNOTATION: &str = "hotload.dev/hosts";

/// The longest user name sent to a pod.
pub const MAX_USERNAME_BYTES: usize = 1024;

/// The longest password or token sent to a pod (registry tokens are a few KiB).
pub const MAX_PASSWORD_BYTES: usize = 16 * 1024;

/// The credentials `secret` holds for `url`'s host: a `kubernetes.io/dockerconfigjson`
/// entry for that registry, or plain `username`/`password` keys if the secret's
/// [`HOSTS_ANNOTATION`] lists the host. Credentials never go to a host the secret does not
/// name: whoever may write a release must not be able to send the operator's reading of
/// any Secret in its namespace to a server of their choosing. `Ok(None)` when the secret
/// has nothing for this host; `Err` names the secret and what is wrong with it, and never
/// quotes its content (the error ends up in events anyone reading the release sees).
pub fn credentials_for(secret: &Secret, url: &str) -> Result<Option<Credentials>, String> {
    let name = secret.metadata.name.as_deref().unwrap_or("?");
    let data = secret.data.clone().unwrap_or_default();
    let text = |key: &str| {
        data.get(key)
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
    };
    let host = host_of(url);
    if let (Some(username), Some(password)) = (text("username"), text("password")) {
        let hosts = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(HOSTS_ANNOTATION))
            .ok_or_else(|| {
                format!(
                    "secret {name} has username/password keys but no {HOSTS_ANNOTATION} \
                     annotation naming the hosts they are for (say, {})",
                    host.unwrap_or("files.example.com")
                )
            })?;
        let listed = host.is_some_and(|host| hosts.split(',').any(|h| h.trim() == host));
        if !listed {
            return Ok(None);
        }
        return sized(name, host.unwrap_or_default(), username, password).map(Some);
    }
    let Some(config) = text(".dockerconfigjson") else {
        return Err(format!(
            "secret {name} has neither .dockerconfigjson nor username/password keys"
        ));
    };
    let config: DockerConfig =
        serde_json::from_str(&config).map_err(|e| docker_config_error(name, &e))?;
    let Some(host) = host else {
        return Ok(None);
    };
    let entry = config.auths.iter().find(|(registry, _)| {
        let registry = registry
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        registry.split('/').next() == Some(host)
    });
    let Some((_, auth)) = entry else {
        return Ok(None);
    };
    // Messages name the entry by the artifact's host (from the release), not by its key.
    let entry = format!("secret {name}: the .dockerconfigjson entry for {host}");
    if let (Some(username), Some(password)) = (&auth.username, &auth.password) {
        return sized(name, host, username.clone(), password.clone()).map(Some);
    }
    let encoded = auth
        .auth
        .as_deref()
        .ok_or_else(|| format!("{entry} has no auth or username/password"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| format!("{entry}: auth is not base64"))?;
    let decoded = String::from_utf8(decoded).map_err(|_| format!("{entry}: auth is not UTF-8"))?;
    let (username, password) = decoded
        .split_once(':')
        .ok_or_else(|| format!("{entry}: auth is not user:password"))?;
    sized(name, host, username.to_string(), password.to_string()).map(Some)
}

/// Why `.dockerconfigjson` did not parse, by class and position only: serde's own message
/// quotes the offending value, which may be a password.
fn docker_config_error(secret: &str, error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let problem = match error.classify() {
        Category::Syntax | Category::Eof | Category::Io => "is not valid JSON",
        Category::Data => {
            "is not a docker config (auths mapping registries to username/password or auth)"
        }
    };
    format!(
        "secret {secret}: .dockerconfigjson {problem} (at line {}, column {})",
        error.line(),
        error.column()
    )
}

/// `username` and `password`, unless either is larger than a pod is sent.
fn sized(
    secret: &str,
    host: &str,
    username: String,
    password: String,
) -> Result<Credentials, String> {
    let too_long = |what: &str, len: usize, max: usize| {
        format!(
            "secret {secret}: the {what} for {host} is {len} bytes, more than the {max} sent to pods"
        )
    };
    if username.len() > MAX_USERNAME_BYTES {
        return Err(too_long("user name", username.len(), MAX_USERNAME_BYTES));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(too_long("password", password.len(), MAX_PASSWORD_BYTES));
    }
    Ok(Credentials { username, password })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        let mut secret = Secret::default();
        secret.metadata.name = Some("pull".into());
        secret.metadata.annotations = Some(
            [(
                HOSTS_ANNOTATION.to_string(),
                "cdn.shop, files.shop".to_string(),
            )]
            .into(),
        );
        secret.data = Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        );
        secret
    }

    fn creds(user: &str, pass: &str) -> Option<Credentials> {
        Some(Credentials {
            username: user.into(),
            password: pass.into(),
        })
    }

    #[test]
    fn docker_config_entries_match_the_artifact_host() {
        let auth = base64::engine::general_purpose::STANDARD.encode("robot:s3cret");
        let config = format!(
            r#"{{"auths": {{"registry.shop:5000": {{"auth": "{auth}"}}, "https://ghcr.example": {{"username": "u", "password": "p"}}}}}}"#
        );
        let s = secret(&[(".dockerconfigjson", &config)]);
        assert_eq!(
            credentials_for(&s, "oci://registry.shop:5000/plugins/auth:1"),
            Ok(creds("robot", "s3cret"))
        );
        assert_eq!(
            credentials_for(&s, "oci://ghcr.example/org/p:2"),
            Ok(creds("u", "p"))
        );
        assert_eq!(credentials_for(&s, "oci://elsewhere/p:1"), Ok(None));
    }

    #[test]
    fn basic_auth_keys_go_only_to_the_hosts_the_secret_names() {
        let mut s = secret(&[("username", "alice"), ("password", "pw")]);
        assert_eq!(
            credentials_for(&s, "https://files.shop/p.wasm"),
            Ok(creds("alice", "pw"))
        );
        assert_eq!(
            credentials_for(&s, "https://attacker.example/p.wasm"),
            Ok(None),
            "never to another host"
        );
        s.metadata.annotations = None;
        let unlisted = credentials_for(&s, "https://files.shop/p.wasm").unwrap_err();
        assert!(
            unlisted.contains("secret pull") && unlisted.contains("hotload.dev/hosts"),
            "{unlisted}"
        );
    }

    #[test]
    fn broken_secrets_say_what_is_wrong() {
        let empty = credentials_for(&secret(&[("token", "x")]), "oci://r/p:1").unwrap_err();
        assert!(
            empty.contains("neither .dockerconfigjson nor username/password"),
            "{empty}"
        );
        let garbage =
            credentials_for(&secret(&[(".dockerconfigjson", "{")]), "oci://r/p:1").unwrap_err();
        assert!(garbage.contains("not valid JSON"), "{garbage}");
        let bad = r#"{"auths": {"r": {"auth": "!!!"}}}"#;
        let bad =
            credentials_for(&secret(&[(".dockerconfigjson", bad)]), "oci://r/p:1").unwrap_err();
        assert!(bad.contains("not base64"), "{bad}");
    }

    #[test]
    fn errors_name_the_secret_and_the_problem_never_its_content() {
        let leaky = [
            r#"{"auths": "hunter2-password"}"#,
            r#"{"auths": {"r": {"auth": "hunter2!"}}}"#,
            r#"{"auths": {"r": {"username": ["hunter2"], "password": "x"}}}"#,
            r#"{"auths": {"r": {"auth": "aHVudGVyMg=="}}}"#,
            r#"{"auths": hunter2}"#,
            "hunter2",
        ];
        for config in leaky {
            let error = credentials_for(&secret(&[(".dockerconfigjson", config)]), "oci://r/p:1")
                .unwrap_err();
            assert!(error.starts_with("secret pull"), "{error}");
            assert!(
                !error.contains("hunter") && !error.contains("symbol"),
                "{config}: {error}"
            );
        }
        let shape = credentials_for(&secret(&[(".dockerconfigjson", leaky[0])]), "oci://r/p:1")
            .unwrap_err();
        assert_eq!(
            shape,
            "secret pull: .dockerconfigjson is not a docker config (auths mapping registries to \
             username/password or auth) (at line 1, column 28)"
        );
    }

    #[test]
    fn credentials_larger_than_a_pod_is_sent_are_refused() {
        let huge = "p".repeat(MAX_PASSWORD_BYTES + 1);
        let s = secret(&[("username", "alice"), ("password", &huge)]);
        assert_eq!(
            credentials_for(&s, "https://files.shop/p.wasm"),
            Err(
                "secret pull: the password for files.shop is 16385 bytes, more than the 16384 \
                 sent to pods"
                    .into()
            )
        );
    }

    #[test]
    fn hosts_come_from_oci_and_https_urls_and_passwords_stay_out_of_logs() {
        assert_eq!(
            host_of("oci://127.0.0.1:5000/a/b:1"),
            Some("127.0.0.1:5000")
        );
        assert_eq!(host_of("https://files.shop/p.wasm"), Some("files.shop"));
        assert_eq!(host_of("ftp://x/y"), None);
        let printed = format!("{:?}", creds("alice", "hunter2"));
        assert!(!printed.contains("hunter2"), "{printed}");
    }
}
