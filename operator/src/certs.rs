//! The operator's own PKI: one long-lived CA and a short-lived serving certificate for the
//! sidecar channel and the injection webhook. Deciding when to issue is pure ([`assess`]);
//! storing the result in a Secret and serving it is [`crate::tls`]'s job.
//!
//! The CA lasts ten years because every injected pod carries it (as the sidecar's trust
//! anchor, like Linkerd's); the serving certificate is renewed when a third of its life is
//! left, without a restart, so rotation never touches pods.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// How long the CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The CA and the serving certificate, all PEM, as kept in the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    /// The CA certificate (`ca.crt`): the webhook's caBundle and the sidecars' trust anchor.
    pub ca_cert: String,
    /// The CA key (`ca.key`); absent when cert-manager owns the Secret.
    pub ca_key: Option<String>,
    /// The serving certificate (`tls.crt`).
    pub cert: String,
    /// The serving key (`tls.key`).
    pub key: String,
}

/// What [`assess`] found to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Nothing: the material is valid long enough and names every host.
    Keep,
    /// Issue a new serving certificate from the existing CA.
    Leaf(String),
    /// Start over with a new CA (and a serving certificate from it).
    Everything(String),
}

/// Why material cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen could not build or sign a certificate.
    #[error("issuing a certificate: {0}")]
    Issue(#[from] rcgen::Error),
    /// A certificate in the Secret is not parseable PEM/X.509.
    #[error("{what} is not a usable PEM certificate: {why}")]
    Parse {
        /// Which certificate.
        what: &'static str,
        /// The parser's complaint.
        why: String,
    },
}

/// What a certificate says about itself, as far as renewal cares.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Facts {
    not_before: i64,
    not_after: i64,
    dns_names: Vec<String>,
    signed_by_ca: bool,
}

fn facts(what: &'static str, pem: &str, ca_pem: Option<&str>) -> Result<Facts, CertError> {
    let parse_err = |why: String| CertError::Parse { what, why };
    let der = pem_der(pem).map_err(parse_err)?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| parse_err(e.to_string()))?;
    let dns_names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some(dns.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let signed_by_ca = match ca_pem {
        None => true,
        Some(ca_pem) => {
            let ca_der = pem_der(ca_pem).map_err(|why| CertError::Parse {
                what: "ca.crt",
                why,
            })?;
            let (_, ca) = X509Certificate::from_der(&ca_der).map_err(|e| CertError::Parse {
                what: "ca.crt",
                why: e.to_string(),
            })?;
            cert.verify_signature(Some(ca.public_key())).is_ok()
        }
    };
    Ok(Facts {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        dns_names,
        signed_by_ca,
    })
}

fn pem_der(pem: &str) -> Result<Vec<u8>, String> {
    let (_, parsed) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    Ok(parsed.contents)
}

/// Whether `material` (what the Secret holds, if anything) can keep serving `names` at
/// `now`. A serving certificate is renewed when less than a third of its life is left.
pub fn assess(material: Option<&Material>, names: &[String], now: OffsetDateTime) -> Renewal {
    let Some(material) = material else {
        return Renewal::Everything("no certificate yet".into());
    };
    let now = now.unix_timestamp();
    let ca = match facts("ca.crt", &material.ca_cert, None) {
        Ok(ca) => ca,
        Err(e) => return Renewal::Everything(e.to_string()),
    };
    if material.ca_key.is_none() {
        return Renewal::Everything("the CA key is missing".into());
    }
    if ca.not_after - now < (ca.not_after - ca.not_before) / 3 {
        return Renewal::Everything("the CA expires soon".into());
    }
    let leaf = match facts("tls.crt", &material.cert, Some(&material.ca_cert)) {
        Ok(leaf) => leaf,
        Err(e) => return Renewal::Leaf(e.to_string()),
    };
    if !leaf.signed_by_ca {
        return Renewal::Leaf("the serving certificate is not signed by the CA".into());
    }
    if let Some(missing) = names.iter().find(|n| !leaf.dns_names.contains(n)) {
        return Renewal::Leaf(format!("the serving certificate does not name {missing}"));
    }
    let life = leaf.not_after - leaf.not_before;
    if leaf.not_after - now < life / 3 {
        return Renewal::Leaf(format!(
            "the serving certificate expires in {}s",
            leaf.not_after - now
        ));
    }
    Renewal::Keep
}

/// When the serving certificate should next be looked at: at the renewal point, and at
/// least hourly (a deleted Secret or a changed Service name is noticed within the hour).
pub fn next_check(material: &Material, now: OffsetDateTime) -> Duration {
    const HOURLY: Duration = Duration::from_secs(3600);
    let Ok(leaf) = facts("tls.crt", &material.cert, None) else {
        return Duration::from_secs(1);
    };
    let renew_at = leaf.not_after - (leaf.not_after - leaf.not_before) / 3;
    let wait = (renew_at - now.unix_timestamp()).max(1);
    Duration::from_secs(u64::try_from(wait).unwrap_or(1)).min(HOURLY)
}

/// A fresh CA: `(cert PEM, key PEM)`.
pub fn issue_ca(now: OffsetDateTime) -> Result<(String, String), CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "hotload-operator CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + CA_VALIDITY;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `names`, signed by the CA: `(cert PEM, key PEM)`.
pub fn issue_leaf(
    ca_cert: &str,
    ca_key: &str,
    names: &[String],
    now: OffsetDateTime,
    validity: Duration,
) -> Result<(String, String), CertError> {
    let issuer = Issuer::from_ca_cert_pem(ca_cert, KeyPair::from_pem(ca_key)?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("hotload-operator", String::as_str),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Backdated for clock skew between replicas and the API server, by a small share of
    // a short validity so that renewal is still a third of the way from the end.
    params.not_before = now - validity.min(Duration::from_secs(300)) / 10;
    params.not_after = now + validity;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Carries out `renewal` on `material`: the new material, or `None` for [`Renewal::Keep`].
pub fn renew(
    material: Option<&Material>,
    renewal: &Renewal,
    names: &[String],
    now: OffsetDateTime,
    validity: Duration,
) -> Result<Option<Material>, CertError> {
    let (ca_cert, ca_key) = match (renewal, material) {
        (Renewal::Keep, _) => return Ok(None),
        (
            Renewal::Leaf(_),
            Some(Material {
                ca_cert,
                ca_key: Some(ca_key),
                ..
            }),
        ) => (ca_cert.clone(), ca_key.clone()),
        _ => issue_ca(now)?,
    };
    let (cert, key) = issue_leaf(&ca_cert, &ca_key, names, now, validity)?;
    Ok(Some(Material {
        ca_cert,
        ca_key: Some(ca_key),
        cert,
        key,
    }))
}

/// The DNS names a Service is reached by from other namespaces.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn names() -> Vec<String> {
        service_names("hotload", "hotload-system")
    }

    fn fresh(now: OffsetDateTime) -> Material {
        renew(
            None,
            &Renewal::Everything("test".into()),
            &names(),
            now,
            90 * DAY,
        )
        .unwrap()
        .unwrap()
    }

    #[test]
    fn nothing_stored_means_a_new_ca_and_leaf() {
        let now = OffsetDateTime::now_utc();
        assert!(matches!(
            assess(None, &names(), now),
            Renewal::Everything(_)
        ));
        let material = fresh(now);
        assert_eq!(assess(Some(&material), &names(), now), Renewal::Keep);
    }

    #[test]
    fn the_leaf_is_renewed_in_the_last_third_of_its_life_from_the_same_ca() {
        let now = OffsetDateTime::now_utc();
        let material = fresh(now);
        assert_eq!(
            assess(Some(&material), &names(), now + 59 * DAY),
            Renewal::Keep
        );
        let later = now + 61 * DAY;
        let renewal = assess(Some(&material), &names(), later);
        assert!(
            matches!(&renewal, Renewal::Leaf(why) if why.contains("expires")),
            "{renewal:?}"
        );
        let renewed = renew(Some(&material), &renewal, &names(), later, 90 * DAY)
            .unwrap()
            .unwrap();
        assert_eq!(
            renewed.ca_cert, material.ca_cert,
            "pods keep trusting the same CA"
        );
        assert_ne!(renewed.cert, material.cert);
        assert_eq!(assess(Some(&renewed), &names(), later), Renewal::Keep);
    }

    #[test]
    fn a_renamed_service_gets_a_leaf_naming_it() {
        let now = OffsetDateTime::now_utc();
        let material = fresh(now);
        let other = service_names("hotload", "platform");
        assert_eq!(
            assess(Some(&material), &other, now),
            Renewal::Leaf("the serving certificate does not name hotload.platform.svc".into())
        );
    }

    #[test]
    fn a_leaf_from_another_ca_or_garbage_is_replaced_and_a_broken_ca_starts_over() {
        let now = OffsetDateTime::now_utc();
        let (a, b) = (fresh(now), fresh(now));
        let mixed = Material {
            cert: b.cert.clone(),
            key: b.key.clone(),
            ..a.clone()
        };
        assert_eq!(
            assess(Some(&mixed), &names(), now),
            Renewal::Leaf("the serving certificate is not signed by the CA".into())
        );
        let garbage = Material {
            cert: "nope".into(),
            ..a.clone()
        };
        assert!(matches!(
            assess(Some(&garbage), &names(), now),
            Renewal::Leaf(_)
        ));
        let no_ca = Material {
            ca_cert: "nope".into(),
            ..a.clone()
        };
        assert!(matches!(
            assess(Some(&no_ca), &names(), now),
            Renewal::Everything(_)
        ));
        let no_key = Material { ca_key: None, ..a };
        assert_eq!(
            assess(Some(&no_key), &names(), now),
            Renewal::Everything("the CA key is missing".into())
        );
    }

    #[test]
    fn checks_come_at_the_renewal_point_and_at_least_hourly() {
        let now = OffsetDateTime::now_utc();
        let short = renew(
            None,
            &Renewal::Everything("t".into()),
            &names(),
            now,
            Duration::from_secs(90),
        )
        .unwrap()
        .unwrap();
        // 99 s of life from 9 s ago: renewed 33 s before the end, 57 s from now.
        let wait = next_check(&short, now);
        assert!((56..=58).contains(&wait.as_secs()), "{wait:?}");
        let long = fresh(now);
        assert_eq!(next_check(&long, now), Duration::from_secs(3600));
    }
}
