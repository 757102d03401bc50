//! The operator's own PKI: one long-lived CA and a short-lived serving certificate for the
//! sidecar channel and the injection webhook. Deciding when to issue is pure ([`assess`]);
//! storing the result in a Secret and serving it is [`crate::tls`]'s job.
//!
//! The CA lasts ten years because every injected pod carries it (as the sidecar's trust
//! anchor, like Linkerd's); the serving certificate is renewed when a third of its life is
//! left, without a restart, so rotation never touches pods. When the CA itself has a third
//! of its life left it is rotated without cutting pods off: the new CA is cross-signed by
//! the old one and that certificate is served after the leaf, so pods that trust only the
//! old CA still verify the new chain, and the old CA stays in the trust bundle new pods and
//! the webhook get until it expires ([`PreviousCa`]). A Secret that is deleted or spoiled
//! is written back from what a replica serves ([`carry_on`]), not replaced by a new CA.

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
    /// The served chain (`tls.crt`): the serving certificate, then, while a previous CA is
    /// kept, the current CA cross-signed by it.
    pub cert: String,
    /// The serving key (`tls.key`).
    pub key: String,
    /// The CA this one replaced, while it is valid.
    pub previous: Option<PreviousCa>,
}

/// A replaced CA, kept until it expires: pods injected before the rotation trust only it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreviousCa {
    /// Its certificate (`ca-previous.crt`), still in the trust bundle.
    pub ca_cert: String,
    /// The current CA's certificate signed by it (`ca-cross.crt`), served after the leaf.
    pub cross: String,
}

impl Material {
    /// What pods and the webhook configuration trust: the CA, and the previous one while
    /// it is kept.
    pub fn trust_bundle(&self) -> String {
        match &self.previous {
            Some(previous) => format!("{}{}", pem_line(&self.ca_cert), pem_line(&previous.ca_cert)),
            None => self.ca_cert.clone(),
        }
    }
}

/// `pem` ending in a newline, so that concatenated PEM stays parseable.
fn pem_line(pem: &str) -> String {
    if pem.ends_with('\n') {
        pem.to_string()
    } else {
        format!("{pem}\n")
    }
}

/// What [`assess`] found to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Nothing: the material is valid long enough and names every host.
    Keep,
    /// Issue a new serving certificate from the existing CA.
    Leaf(String),
    /// A new CA cross-signed by the current one, which stays trusted until it expires.
    Rotate(String),
    /// Start over with a new CA (and a serving certificate from it).
    Everything(String),
    /// Write back the material served, as it is: the stored one is gone or unusable.
    Restore(String),
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
        return Renewal::Rotate("the CA expires soon".into());
    }
    if let Some(previous) = &material.previous
        && facts("ca-previous.crt", &previous.ca_cert, None).is_ok_and(|p| p.not_after <= now)
    {
        return Renewal::Leaf("the previous CA expired".into());
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
/// least every minute (a deleted Secret is written back, and a changed Service name
/// noticed, within the minute).
pub fn next_check(material: &Material, now: OffsetDateTime) -> Duration {
    const EVERY_MINUTE: Duration = Duration::from_secs(60);
    let Ok(leaf) = facts("tls.crt", &material.cert, None) else {
        return Duration::from_secs(1);
    };
    let renew_at = leaf.not_after - (leaf.not_after - leaf.not_before) / 3;
    let wait = (renew_at - now.unix_timestamp()).max(1);
    Duration::from_secs(u64::try_from(wait).unwrap_or(1)).min(EVERY_MINUTE)
}

/// A fresh CA: `(cert PEM, key PEM)`.
pub fn issue_ca(now: OffsetDateTime) -> Result<(String, String), CertError> {
    let key = KeyPair::generate()?;
    let cert = ca_params(now)?.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What every CA the operator issues says of itself, from `now`.
fn ca_params(now: OffsetDateTime) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "hotload-operator CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + CA_VALIDITY;
    Ok(params)
}

/// A new CA to replace `old_cert` (whose key is `old_key`): `(cert PEM, key PEM, cross PEM)`,
/// where the cross certificate is the new CA (same name, same key) signed by the old one,
/// lasting no longer than it. A chain through it ends at the old CA, which pods injected
/// before the rotation trust.
fn rotate_ca(
    old_cert: &str,
    old_key: &str,
    now: OffsetDateTime,
) -> Result<(String, String, String), CertError> {
    let key = KeyPair::generate()?;
    let cert = ca_params(now)?.self_signed(&key)?;
    let old_end = facts("ca.crt", old_cert, None)?.not_after;
    let mut cross = ca_params(now)?;
    cross.not_after = cross
        .not_after
        .min(OffsetDateTime::from_unix_timestamp(old_end).unwrap_or(cross.not_after));
    let issuer = Issuer::from_ca_cert_pem(old_cert, KeyPair::from_pem(old_key)?)?;
    let cross = cross.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem(), cross.pem()))
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

/// What to carry on from at `now`: the stored material and what [`assess`] says of it,
/// unless it is gone or unusable (which would mean a new CA, cutting off every pod that
/// trusts the old one) while `served`, what this replica serves, is still good: then that,
/// to be written back. Pure.
pub fn carry_on<'a>(
    stored: Option<&'a Material>,
    served: Option<&'a Material>,
    names: &[String],
    now: OffsetDateTime,
) -> (Option<&'a Material>, Renewal) {
    let renewal = assess(stored, names, now);
    let (Renewal::Everything(why), Some(served)) = (&renewal, served) else {
        return (stored, renewal);
    };
    match assess(Some(served), names, now) {
        Renewal::Everything(_) => (stored, renewal),
        Renewal::Keep | Renewal::Restore(_) => (
            Some(served),
            Renewal::Restore(format!(
                "stored material unusable ({why}): restored what is served"
            )),
        ),
        other => (Some(served), other),
    }
}

/// Carries out `renewal` on `material`: the new material, or `None` for [`Renewal::Keep`].
pub fn renew(
    material: Option<&Material>,
    renewal: &Renewal,
    names: &[String],
    now: OffsetDateTime,
    validity: Duration,
) -> Result<Option<Material>, CertError> {
    let signing = material.and_then(|m| m.ca_key.as_ref().map(|key| (m, key)));
    let (ca_cert, ca_key, previous) = match (renewal, signing) {
        (Renewal::Keep, _) => return Ok(None),
        (Renewal::Restore(_), _) => return Ok(material.cloned()),
        (Renewal::Leaf(_), Some((m, key))) => {
            let previous = m.previous.clone().filter(|p| !expired(&p.ca_cert, now));
            (m.ca_cert.clone(), key.clone(), previous)
        }
        (Renewal::Rotate(_), Some((m, key))) => {
            let (ca_cert, ca_key, cross) = rotate_ca(&m.ca_cert, key, now)?;
            let previous = PreviousCa {
                ca_cert: m.ca_cert.clone(),
                cross,
            };
            (ca_cert, ca_key, Some(previous))
        }
        _ => {
            let (ca_cert, ca_key) = issue_ca(now)?;
            (ca_cert, ca_key, None)
        }
    };
    let (leaf, key) = issue_leaf(&ca_cert, &ca_key, names, now, validity)?;
    let cert = match &previous {
        Some(previous) => format!("{}{}", pem_line(&leaf), pem_line(&previous.cross)),
        None => leaf,
    };
    Ok(Some(Material {
        ca_cert,
        ca_key: Some(ca_key),
        cert,
        key,
        previous,
    }))
}

/// Whether the certificate `pem` is unusable or past its end at `now`.
fn expired(pem: &str, now: OffsetDateTime) -> bool {
    facts("ca-previous.crt", pem, None).map_or(true, |f| f.not_after <= now.unix_timestamp())
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
    fn checks_come_at_the_renewal_point_and_at_least_every_minute() {
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
        assert_eq!(next_check(&long, now), Duration::from_secs(60));
    }

    /// Whether a client trusting `roots` (PEM) accepts the served chain `chain` (PEM) for
    /// the service at `at`: what the sidecar's TLS (rustls, webpki) decides.
    fn verifies(chain: &str, roots: &str, at: OffsetDateTime) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let mut store = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(roots.as_bytes()) {
            store.add(cert.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(store.into(), provider)
                .build()
                .unwrap();
        let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(chain.as_bytes())
            .map(Result::unwrap)
            .collect();
        let name = ServerName::try_from("hotload.hotload-system.svc").unwrap();
        let at = UnixTime::since_unix_epoch(Duration::from_secs(at.unix_timestamp() as u64));
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &name, &[], at)
            .map(|_| ())
    }

    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

    #[test]
    fn a_ca_due_for_rotation_is_cross_signed_so_pods_that_trust_only_it_keep_verifying() {
        let now = OffsetDateTime::now_utc();
        let old = fresh(now);
        let later = now + 7 * YEAR;
        let renewal = assess(Some(&old), &names(), later);
        assert_eq!(renewal, Renewal::Rotate("the CA expires soon".into()));
        let rotated = renew(Some(&old), &renewal, &names(), later, 90 * DAY)
            .unwrap()
            .unwrap();
        assert_ne!(rotated.ca_cert, old.ca_cert);
        assert_eq!(
            rotated.previous.as_ref().map(|p| &p.ca_cert),
            Some(&old.ca_cert)
        );
        assert_eq!(assess(Some(&rotated), &names(), later), Renewal::Keep);

        let served = &rotated.cert;
        verifies(served, &old.ca_cert, later).expect("a pod injected before the rotation");
        verifies(served, &rotated.ca_cert, later).expect("a pod trusting only the new CA");
        verifies(served, &rotated.trust_bundle(), later).expect("a pod injected since");
        let bundle = rotated.trust_bundle();
        assert!(bundle.contains(&rotated.ca_cert) && bundle.contains(&old.ca_cert));

        // The serving certificate is renewed during the overlap: still through the old CA.
        let renewal_day = later + 61 * DAY;
        let leaf = assess(Some(&rotated), &names(), renewal_day);
        assert!(matches!(leaf, Renewal::Leaf(_)), "{leaf:?}");
        let renewed = renew(Some(&rotated), &leaf, &names(), renewal_day, 90 * DAY)
            .unwrap()
            .unwrap();
        assert_eq!(renewed.previous, rotated.previous);
        verifies(&renewed.cert, &old.ca_cert, renewal_day).expect("old pods, after a renewal");
    }

    #[test]
    fn the_previous_ca_leaves_the_bundle_once_it_expires() {
        let now = OffsetDateTime::now_utc();
        let old = fresh(now);
        let later = now + 7 * YEAR;
        let rotated = renew(
            Some(&old),
            &Renewal::Rotate("t".into()),
            &names(),
            later,
            90 * DAY,
        )
        .unwrap()
        .unwrap();
        let gone = now + 10 * YEAR + DAY;
        let renewal = assess(Some(&rotated), &names(), gone);
        assert_eq!(renewal, Renewal::Leaf("the previous CA expired".into()));
        let renewed = renew(Some(&rotated), &renewal, &names(), gone, 90 * DAY)
            .unwrap()
            .unwrap();
        assert_eq!(
            (&renewed.previous, &renewed.ca_cert),
            (&None, &rotated.ca_cert)
        );
        assert_eq!(renewed.trust_bundle(), rotated.ca_cert);
        verifies(&renewed.cert, &rotated.ca_cert, gone).expect("pods trusting the new CA");
    }

    #[test]
    fn a_deleted_or_spoiled_secret_is_restored_from_what_is_served_not_replaced() {
        let now = OffsetDateTime::now_utc();
        let served = fresh(now);
        let (basis, renewal) = carry_on(None, Some(&served), &names(), now);
        assert_eq!(basis, Some(&served));
        assert!(
            matches!(&renewal, Renewal::Restore(why) if why.contains("no certificate yet")),
            "{renewal:?}"
        );
        let restored = renew(basis, &renewal, &names(), now, 90 * DAY).unwrap();
        assert_eq!(restored.as_ref(), Some(&served), "written back as it is");

        let spoiled = Material {
            ca_key: None,
            ..served.clone()
        };
        let (basis, renewal) = carry_on(Some(&spoiled), Some(&served), &names(), now);
        assert_eq!(basis, Some(&served));
        assert!(matches!(renewal, Renewal::Restore(_)), "{renewal:?}");

        // A served leaf that is due is renewed from the served CA.
        let due = now + 61 * DAY;
        let (basis, renewal) = carry_on(None, Some(&served), &names(), due);
        assert!(matches!(renewal, Renewal::Leaf(_)), "{renewal:?}");
        let renewed = renew(basis, &renewal, &names(), due, 90 * DAY)
            .unwrap()
            .unwrap();
        assert_eq!(renewed.ca_cert, served.ca_cert);

        // What another replica stored is used as it is; only with nothing served, start over.
        let other = fresh(now);
        assert_eq!(
            carry_on(Some(&other), Some(&served), &names(), now),
            (Some(&other), Renewal::Keep)
        );
        assert!(matches!(
            carry_on(None, None, &names(), now),
            (None, Renewal::Everything(_))
        ));
    }
}
