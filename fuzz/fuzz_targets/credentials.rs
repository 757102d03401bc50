//! Pull secrets. The first byte picks the shape, the rest is split at NUL bytes:
//! - 0: the operator's `credentials::credentials_for` over a `.dockerconfigjson` secret
//!   (`url NUL config`);
//! - 1: the same over a `username`/`password` secret (`url NUL user NUL password NUL hosts`);
//! - 2: the sidecar's `PullSecrets::parse` of a mounted `.dockerconfigjson` (`host NUL json`).
#![no_main]

use std::collections::BTreeMap;

use hotload_operator::credentials::{self, HOSTS_ANNOTATION};
use hotload_sidecar::fetch::oci::PullSecrets;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use libfuzzer_sys::fuzz_target;

fn secret(data: &[(&str, &[u8])], hosts: Option<&[u8]>) -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some("pull".into());
    secret.metadata.annotations = hosts.map(|h| {
        BTreeMap::from([(
            HOSTS_ANNOTATION.to_string(),
            String::from_utf8_lossy(h).into_owned(),
        )])
    });
    secret.data = Some(
        data.iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
            .collect(),
    );
    secret
}

fn check(secret: &Secret, url: &str) {
    let _ = credentials::host_of(url);
    if let Ok(Some(c)) = credentials::credentials_for(secret, url) {
        assert!(c.username.len() <= credentials::MAX_USERNAME_BYTES);
        assert!(c.password.len() <= credentials::MAX_PASSWORD_BYTES);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&shape, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(4, |b| *b == 0);
    let mut next = || parts.next().unwrap_or_default();
    match shape % 3 {
        0 => {
            let url = String::from_utf8_lossy(next()).into_owned();
            let config = next();
            check(&secret(&[(".dockerconfigjson", config)], None), &url);
        }
        1 => {
            let url = String::from_utf8_lossy(next()).into_owned();
            let (user, password, hosts) = (next(), next(), next());
            check(
                &secret(&[("username", user), ("password", password)], Some(hosts)),
                &url,
            );
        }
        _ => {
            let host = String::from_utf8_lossy(next()).into_owned();
            let json = rest.splitn(2, |b| *b == 0).nth(1).unwrap_or_default();
            if let Ok(secrets) = PullSecrets::parse(json) {
                let _ = secrets.credentials_for(&host);
            }
        }
    }
});
