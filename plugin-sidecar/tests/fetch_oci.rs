//! OCI pulls against Debian's real `docker-registry` (distribution 2.x), started here on
//! 127.0.0.1 with TLS from a test CA and htpasswd auth; artifacts pushed with oci-client.
//! Needs the `docker-registry` apt package; without it the tests say so loudly and pass.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hotload_sidecar::digest::Sha256Digest;
use hotload_sidecar::fetch::oci::{OciPuller, PullSecrets};
use hotload_sidecar::fetch::{FetchError, Fetcher, HttpLimits, RetryPolicy, https};
use hotload_sidecar::store::Store;
use oci_client::client::{ClientConfig, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use support::TestPki;

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const PLUGIN: &[u8] = b"\0asm\x01\0\0\0 an OCI-delivered plugin";
const USER: &str = "puller";
const PASS: &str = "s3cret";

struct Registry {
    child: tokio::process::Child,
    host: String,
    pki: TestPki,
    dir: tempfile::TempDir,
}

async fn start_registry() -> Option<Registry> {
    if !Path::new(REGISTRY_BIN).exists() {
        // `make deps` installs it; a missing registry must not turn these tests into passes.
        assert!(
            std::env::var_os("HOTLOAD_ALLOW_SKIP").is_some(),
            "{REGISTRY_BIN} is missing: run `make deps` (apt-get install docker-registry), \
             or set HOTLOAD_ALLOW_SKIP=1 to skip the OCI tests"
        );
        eprintln!("\n!!!!!!!! SKIPPED: {REGISTRY_BIN} is missing (HOTLOAD_ALLOW_SKIP) !!!!!!!!\n");
        return None;
    }
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |name: &str| dir.path().join(name);
    std::fs::write(p("cert.pem"), pki.leaf_pem()).expect("cert");
    std::fs::write(p("key.pem"), pki.leaf_key_pem()).expect("key");
    let hash = bcrypt::hash(PASS, 4).expect("bcrypt");
    std::fs::write(p("htpasswd"), format!("{USER}:{hash}\n")).expect("htpasswd");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let config = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {data}\nhttp:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {cert}\n    key: {key}\nauth:\n  htpasswd:\n    realm: hotload-test\n    path: {htpasswd}\n",
        data = p("data").display(),
        cert = p("cert.pem").display(),
        key = p("key.pem").display(),
        htpasswd = p("htpasswd").display(),
    );
    std::fs::write(p("config.yml"), config).expect("config");
    let child = tokio::process::Command::new(REGISTRY_BIN)
        .arg("serve")
        .arg(p("config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start docker-registry");
    let host = format!("127.0.0.1:{port}");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(&host).await.is_ok() {
            return Some(Registry {
                child,
                host,
                pki,
                dir,
            });
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("docker-registry did not listen on {host} within 5 s");
}

impl Registry {
    fn client(&self) -> Client {
        Client::new(ClientConfig {
            extra_root_certificates: vec![oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data: self.pki.ca_pem.clone().into_bytes(),
            }],
            ..Default::default()
        })
    }

    /// Pushes `bytes` as the single layer of `repo:tag`; returns the manifest digest.
    async fn push(&self, repo: &str, tag: &str, bytes: &[u8]) -> String {
        let reference = Reference::with_tag(self.host.clone(), repo.into(), tag.into());
        let auth = RegistryAuth::Basic(USER.into(), PASS.into());
        let layer = ImageLayer::new(
            bytes.to_vec(),
            "application/vnd.hotload.plugin.v1+wasm".into(),
            None,
        );
        let config = Config::new(
            b"{}".to_vec(),
            "application/vnd.hotload.plugin.config.v1+json".into(),
            None,
        );
        let client = self.client();
        client
            .push(&reference, &[layer], config, &auth, None)
            .await
            .expect("push to registry");
        client
            .pull_image_manifest(&reference, &auth)
            .await
            .expect("manifest")
            .1
    }

    fn fetcher(&self, secret: Option<&str>) -> Fetcher {
        let limits = HttpLimits {
            max_bytes: 1 << 20,
            ..HttpLimits::default()
        };
        let ca = self.pki.ca_pem.as_bytes();
        let secrets = secret
            .map(|s| PullSecrets::parse(s.as_bytes()).expect("secret"))
            .unwrap_or_default();
        let retry = RetryPolicy {
            attempts: 2,
            base: Duration::from_millis(10),
            cap: Duration::from_millis(20),
        };
        Fetcher::new(
            https::build_client(&limits, Some(ca)).expect("client"),
            limits.clone(),
            retry,
            OciPuller::new(secrets),
        )
    }

    /// Signs `repo@manifest` the way `cosign sign --key` does: a simple-signing payload
    /// naming the manifest, its signature in an annotation, pushed as `sha256-<hex>.sig`.
    async fn sign(&self, repo: &str, manifest: &str, signer: &sigstore::crypto::SigStoreSigner) {
        use base64::Engine as _;
        use sigstore::cosign::{ClientBuilder, CosignCapabilities, SignatureLayer};
        use sigstore::registry::{Auth, Certificate, CertificateEncoding, OciReference};
        let mut client = ClientBuilder::default()
            .with_oci_client_config(sigstore::registry::ClientConfig {
                extra_root_certificates: vec![Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: self.pki.ca_pem.clone().into_bytes(),
                }],
                ..Default::default()
            })
            .build()
            .expect("cosign client");
        let source: OciReference = format!("{}/{repo}@{manifest}", self.host)
            .parse()
            .expect("reference");
        let auth = Auth::Basic(USER.into(), PASS.into());
        let (signature_image, _) = client
            .triangulate(&source, &auth)
            .await
            .expect("triangulate");
        let mut layer = SignatureLayer::new_unsigned(&source, manifest).expect("payload");
        let signature = signer.sign(&layer.raw_data).expect("sign");
        layer.signature = Some(base64::engine::general_purpose::STANDARD.encode(signature));
        client
            .push_signature(None, &auth, &signature_image, vec![layer])
            .await
            .expect("push signature");
    }

    fn secret(&self, pass: &str) -> String {
        format!(
            r#"{{"auths":{{"{}":{{"username":"{USER}","password":"{pass}"}}}}}}"#,
            self.host
        )
    }

    fn store(&self) -> (Store, PathBuf) {
        let root = self.dir.path().join(format!("store-{}", fastrand::u32(..)));
        (Store::open(&root).expect("store"), root)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test]
async fn pulls_a_digest_pinned_plugin_with_pull_secret_credentials() {
    let Some(reg) = start_registry().await else {
        return;
    };
    let manifest = reg.push("team/auth", "v1", PLUGIN).await;
    let artifact = format!("oci://{}/team/auth:v1@{manifest}", reg.host);
    let (store, _) = reg.store();
    let digest = Sha256Digest::of(PLUGIN);
    let got = reg
        .fetcher(Some(&reg.secret(PASS)))
        .fetch(&artifact, &digest, &store)
        .await
        .expect("pull");
    assert!(got.downloaded);
    assert_eq!(std::fs::read(&got.path).expect("blob"), PLUGIN);
    // By tag only, too.
    let (store, _) = reg.store();
    let by_tag = format!("oci://{}/team/auth:v1", reg.host);
    reg.fetcher(Some(&reg.secret(PASS)))
        .fetch(&by_tag, &digest, &store)
        .await
        .expect("pull by tag");
}

#[tokio::test]
async fn registry_failures_are_named() {
    let Some(reg) = start_registry().await else {
        return;
    };
    reg.push("team/auth", "v1", PLUGIN).await;
    let digest = Sha256Digest::of(PLUGIN);
    let artifact = format!("oci://{}/team/auth:v1", reg.host);

    let (store, _) = reg.store();
    let err = reg
        .fetcher(None)
        .fetch(&artifact, &digest, &store)
        .await
        .expect_err("anonymous");
    assert!(matches!(err, FetchError::Unauthorized { .. }), "{err}");
    let err = reg
        .fetcher(Some(&reg.secret("wrong")))
        .fetch(&artifact, &digest, &store)
        .await
        .expect_err("bad password");
    assert!(matches!(err, FetchError::Unauthorized { .. }), "{err}");

    let missing = format!("oci://{}/team/auth:nope", reg.host);
    let err = reg
        .fetcher(Some(&reg.secret(PASS)))
        .fetch(&missing, &digest, &store)
        .await
        .expect_err("no tag");
    assert!(matches!(err, FetchError::NotFound { .. }), "{err}");

    let err = reg
        .fetcher(Some(&reg.secret(PASS)))
        .fetch(
            &artifact,
            &Sha256Digest::of(b"pinned to other bytes"),
            &store,
        )
        .await
        .expect_err("digest");
    assert!(matches!(err, FetchError::DigestMismatch { .. }), "{err}");
    assert!(
        store.verified_blob(&digest).is_none()
            && store
                .verified_blob(&Sha256Digest::of(b"pinned to other bytes"))
                .is_none()
    );

    // A client that does not trust the registry's CA.
    let limits = HttpLimits::default();
    let untrusting = Fetcher::new(
        https::build_client(&limits, None).expect("client"),
        limits.clone(),
        RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        },
        OciPuller::new(PullSecrets::parse(reg.secret(PASS).as_bytes()).expect("secret")),
    );
    let err = untrusting
        .fetch(&artifact, &digest, &store)
        .await
        .expect_err("untrusted");
    assert!(matches!(err, FetchError::Tls { .. }), "{err}");
}

#[tokio::test]
async fn a_signature_policy_admits_only_artifacts_signed_with_its_key() {
    let Some(reg) = start_registry().await else {
        return;
    };
    let (signer, key) = support::cosign_key();
    let (_, other_key) = support::cosign_key();
    let signed = reg.push("team/auth", "v1", PLUGIN).await;
    reg.sign("team/auth", &signed, &signer).await;
    let digest = Sha256Digest::of(PLUGIN);
    let fetcher = reg.fetcher(Some(&reg.secret(PASS)));
    let (store, _) = reg.store();

    let artifact = format!("oci://{}/team/auth:v1@{signed}", reg.host);
    fetcher
        .fetch_with(&artifact, &digest, &store, None, Some(&key))
        .await
        .expect("signed with the release's key");
    let by_tag = format!("oci://{}/team/auth:v1", reg.host);
    fetcher
        .fetch_with(&by_tag, &digest, &store, None, Some(&key))
        .await
        .expect("by tag: the tag resolves to the signed manifest");

    let err = fetcher
        .fetch_with(&artifact, &digest, &store, None, Some(&other_key))
        .await
        .expect_err("another key");
    assert!(matches!(err, FetchError::Signature { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("verifies with the release's public key"),
        "{err}"
    );

    let other: &[u8] = b"\0asm\x01\0\0\0 an unsigned plugin";
    let unsigned = reg.push("team/auth", "v2", other).await;
    let err = fetcher
        .fetch_with(
            &format!("oci://{}/team/auth:v2@{unsigned}", reg.host),
            &Sha256Digest::of(other),
            &store,
            None,
            Some(&key),
        )
        .await
        .expect_err("unsigned");
    assert!(
        err.to_string().contains("unsigned: no cosign signature"),
        "{err}"
    );
}

#[tokio::test]
async fn a_signed_revision_verified_once_rolls_back_from_the_cache_with_the_registry_down() {
    let Some(mut reg) = start_registry().await else {
        return;
    };
    let (signer, key) = support::cosign_key();
    let signed = reg.push("team/auth", "v1", PLUGIN).await;
    reg.sign("team/auth", &signed, &signer).await;
    let digest = Sha256Digest::of(PLUGIN);
    let artifact = format!("oci://{}/team/auth:v1@{signed}", reg.host);
    let (store, _) = reg.store();
    reg.fetcher(Some(&reg.secret(PASS)))
        .fetch_with(&artifact, &digest, &store, None, Some(&key))
        .await
        .expect("verified at the registry");

    reg.child.kill().await.expect("registry stopped");
    let fetcher = reg.fetcher(Some(&reg.secret(PASS)));
    let again = fetcher
        .fetch_with(&artifact, &digest, &store, None, Some(&key))
        .await
        .expect("verified from the store, the registry down");
    assert!(!again.downloaded);
    let (_, other_key) = support::cosign_key();
    let err = fetcher
        .fetch_with(&artifact, &digest, &store, None, Some(&other_key))
        .await
        .expect_err("another key needs the registry");
    assert_eq!(err.label(), "connect", "{err}");
}
