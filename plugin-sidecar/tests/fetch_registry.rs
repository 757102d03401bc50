//! OCI pulls against a fake registry on 127.0.0.1 that records every request: credentials
//! reach only the host they are for (a token service or blob store on another port is
//! another host), documents around the artifact are read within limits, and a registry
//! that stops answering is a timeout, not a hang.

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use hotload_sidecar::assignment::Credentials;
use hotload_sidecar::digest::Sha256Digest;
use hotload_sidecar::fetch::oci::{OciPuller, PullSecrets};
use hotload_sidecar::fetch::{FetchError, Fetcher, HttpLimits, RetryPolicy, https};
use hotload_sidecar::store::Store;
use support::TestPki;
use support::recording::{RecordingServer, Reply, filler};

const PLUGIN: &[u8] = b"\0asm\x01\0\0\0 a plugin from a fake registry";
const USER: &str = "puller";
const PASS: &str = "s3cret";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

fn limits() -> HttpLimits {
    HttpLimits {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_millis(500),
        total_timeout: Duration::from_secs(3),
        max_bytes: 1 << 20,
    }
}

fn fetcher(pki: &TestPki, secret: &str) -> Fetcher {
    let ca = pki.ca_pem.as_bytes();
    Fetcher::new(
        https::build_client(&limits(), Some(ca)).expect("client"),
        limits(),
        RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        },
        OciPuller::new(PullSecrets::parse(secret.as_bytes()).expect("secret")),
    )
}

fn credentials() -> Credentials {
    Credentials {
        username: USER.into(),
        password: PASS.into(),
    }
}

fn basic() -> String {
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    format!("Basic {pair}")
}

fn host(server: &RecordingServer) -> &str {
    server.base.trim_start_matches("https://")
}

/// An image manifest with one layer of `bytes`, as `media_type`, `annotations` on it.
fn manifest(media_type: &str, bytes: &[u8], annotations: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": Sha256Digest::of(b"{}").to_string(), "size": 2},
        "layers": [{"mediaType": media_type, "digest": Sha256Digest::of(bytes).to_string(),
                    "size": bytes.len(), "annotations": annotations}],
    }))
    .expect("manifest JSON")
}

struct Fake {
    pki: TestPki,
    registry: RecordingServer,
    /// Another host: a token service or a blob store.
    elsewhere: RecordingServer,
    store: Store,
    _dir: tempfile::TempDir,
}

async fn fake() -> Fake {
    let pki = TestPki::generate();
    let registry = RecordingServer::start(&pki).await;
    let elsewhere = RecordingServer::start(&pki).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    Fake {
        pki,
        registry,
        elsewhere,
        store,
        _dir: dir,
    }
}

impl Fake {
    /// Publishes PLUGIN as `team/auth:v1` (and by its manifest digest), each answer wrapped
    /// by `guard`; the blob answers with `blob`. Returns the pinned artifact reference.
    fn publish(&self, guard: impl Fn(Reply) -> Reply, blob: Reply) -> (String, Vec<u8>) {
        let bytes = manifest("application/wasm", PLUGIN, serde_json::json!({}));
        let digest = Sha256Digest::of(&bytes);
        let reply = guard(Reply::typed(MANIFEST_TYPE, bytes.clone()));
        self.registry.reply("/v2/", guard(Reply::ok("{}")));
        self.registry
            .reply("/v2/team/auth/manifests/v1", reply.clone());
        self.registry
            .reply(&format!("/v2/team/auth/manifests/{digest}"), reply);
        let blob_path = format!("/v2/team/auth/blobs/{}", Sha256Digest::of(PLUGIN));
        self.registry.reply(&blob_path, guard(blob));
        let artifact = format!("oci://{}/team/auth:v1@{digest}", host(&self.registry));
        (artifact, bytes)
    }

    fn bearer(&self, realm: &str) -> impl Fn(Reply) -> Reply {
        let challenge = format!(r#"Bearer realm="{realm}",service="fake-registry""#);
        move |then| Reply::challenge(&challenge, then)
    }
}

#[tokio::test]
async fn a_token_service_or_blob_store_on_another_host_gets_no_registry_credentials() {
    let f = fake().await;
    let elsewhere = f.elsewhere.base.clone();
    f.elsewhere.reply("/token", Reply::ok(r#"{"token":"t0k"}"#));
    f.elsewhere.reply("/cdn/plugin", Reply::ok(PLUGIN));
    let (artifact, _) = f.publish(
        f.bearer(&format!("{elsewhere}/token")),
        Reply::redirect(&format!("{elsewhere}/cdn/plugin")),
    );
    let got = fetcher(&f.pki, r#"{"auths":{}}"#)
        .fetch_with(
            &artifact,
            &Sha256Digest::of(PLUGIN),
            &f.store,
            Some(&credentials()),
            None,
        )
        .await
        .expect("pulled with an anonymous token");
    assert_eq!(std::fs::read(got.path).expect("blob"), PLUGIN);
    assert!(
        f.elsewhere.seen().iter().all(|s| s.authorization.is_none()),
        "the other host saw credentials: {:?}",
        f.elsewhere.seen()
    );
    let token = f.elsewhere.seen().into_iter().find(|s| s.path == "/token");
    assert!(
        token
            .and_then(|t| t.query)
            .is_some_and(|q| q.contains("scope=repository%3Ateam%2Fauth%3Apull")),
        "a pull token for the repository was asked for"
    );
    assert!(
        f.registry
            .seen()
            .iter()
            .any(|s| s.authorization.as_deref() == Some("Bearer t0k")),
        "the registry got the token"
    );
}

#[tokio::test]
async fn the_registrys_own_token_service_gets_its_credentials_and_another_only_its_own_entry() {
    let f = fake().await;
    let registry = f.registry.base.clone();
    f.registry.reply("/token", Reply::ok(r#"{"token":"t0k"}"#));
    let (artifact, _) = f.publish(f.bearer(&format!("{registry}/token")), Reply::ok(PLUGIN));
    fetcher(&f.pki, r#"{"auths":{}}"#)
        .fetch_with(
            &artifact,
            &Sha256Digest::of(PLUGIN),
            &f.store,
            Some(&credentials()),
            None,
        )
        .await
        .expect("pulled");
    assert_eq!(f.registry.authorizations("/token"), vec![Some(basic())]);

    // The pull secret names the other host too: that entry, and only that one, goes there.
    let f = fake().await;
    let elsewhere = f.elsewhere.base.clone();
    f.elsewhere.reply("/token", Reply::ok(r#"{"token":"t0k"}"#));
    let (artifact, _) = f.publish(f.bearer(&format!("{elsewhere}/token")), Reply::ok(PLUGIN));
    let secret = format!(
        r#"{{"auths":{{"{}":{{"username":"{USER}","password":"{PASS}"}},"{}":{{"username":"hub","password":"x"}}}}}}"#,
        host(&f.registry),
        host(&f.elsewhere)
    );
    fetcher(&f.pki, &secret)
        .fetch(&artifact, &Sha256Digest::of(PLUGIN), &f.store)
        .await
        .expect("pulled");
    let hub = base64::engine::general_purpose::STANDARD.encode("hub:x");
    assert_eq!(
        f.elsewhere.authorizations("/token"),
        vec![Some(format!("Basic {hub}"))]
    );
}

#[tokio::test]
async fn a_token_refused_elsewhere_says_the_credentials_stayed_with_their_registry() {
    let f = fake().await;
    let elsewhere = f.elsewhere.base.clone();
    f.elsewhere.reply(
        "/token",
        Reply::Canned {
            status: 401,
            headers: Vec::new(),
            body: b"{}".to_vec(),
        },
    );
    let (artifact, _) = f.publish(f.bearer(&format!("{elsewhere}/token")), Reply::ok(PLUGIN));
    let err = fetcher(&f.pki, r#"{"auths":{}}"#)
        .fetch_with(
            &artifact,
            &Sha256Digest::of(PLUGIN),
            &f.store,
            Some(&credentials()),
            None,
        )
        .await
        .expect_err("no token");
    assert_eq!(err.label(), "unauthorized", "{err}");
    assert!(
        err.to_string().contains("credentials were not sent there"),
        "{err}"
    );
    assert!(!err.retryable());
}

#[tokio::test]
async fn an_oversized_manifest_or_token_answer_is_refused_naming_the_limit() {
    let f = fake().await;
    f.publish(|r| r, Reply::ok(PLUGIN));
    f.registry.reply(
        "/v2/team/auth/manifests/v1",
        Reply::typed(MANIFEST_TYPE, filler((4 << 20) + 1)),
    );
    let by_tag = format!("oci://{}/team/auth:v1", host(&f.registry));
    let err = fetcher(&f.pki, r#"{"auths":{}}"#)
        .fetch(&by_tag, &Sha256Digest::of(PLUGIN), &f.store)
        .await
        .expect_err("manifest too large");
    assert!(matches!(err, FetchError::Oversized { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("/v2/team/auth/manifests/v1 is larger than 4194304 bytes"),
        "{text}"
    );
    assert!(text.starts_with(&by_tag), "names the artifact: {text}");

    let f = fake().await;
    let elsewhere = f.elsewhere.base.clone();
    f.elsewhere
        .reply("/token", Reply::ok(filler((64 << 10) + 1)));
    let (artifact, _) = f.publish(f.bearer(&format!("{elsewhere}/token")), Reply::ok(PLUGIN));
    let err = fetcher(&f.pki, r#"{"auths":{}}"#)
        .fetch(&artifact, &Sha256Digest::of(PLUGIN), &f.store)
        .await
        .expect_err("token answer too large");
    assert!(
        err.to_string().contains(&format!(
            "token response from {elsewhere}/token is larger than 65536 bytes"
        )),
        "{err}"
    );
}

#[tokio::test]
async fn a_signature_lookup_that_hangs_times_out() {
    let f = fake().await;
    let (artifact, image) = f.publish(|r| r, Reply::ok(PLUGIN));
    let tag = format!("sha256-{}.sig", Sha256Digest::of(&image).hex());
    f.registry
        .reply(&format!("/v2/team/auth/manifests/{tag}"), Reply::Hang);
    let (_, key) = support::cosign_key();
    let (fetcher, digest) = (fetcher(&f.pki, r#"{"auths":{}}"#), Sha256Digest::of(PLUGIN));
    let started = Instant::now();
    let fetch = fetcher.fetch_with(&artifact, &digest, &f.store, None, Some(&key));
    let err = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .expect("the signature lookup must end by itself")
        .expect_err("no answer, no signature");
    assert_eq!(err.label(), "timeout", "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
}

#[tokio::test]
async fn an_oversized_signature_payload_is_not_read() {
    let f = fake().await;
    let (artifact, image) = f.publish(|r| r, Reply::ok(PLUGIN));
    let payload = filler(8 * 1024 + 1);
    let annotations = serde_json::json!({"dev.cosignproject.cosign/signature": "MEUCIQ=="});
    let signatures = manifest(SIMPLE_SIGNING, &payload, annotations);
    let tag = format!("sha256-{}.sig", Sha256Digest::of(&image).hex());
    f.registry.reply(
        &format!("/v2/team/auth/manifests/{tag}"),
        Reply::typed(MANIFEST_TYPE, signatures),
    );
    f.registry.reply(
        &format!("/v2/team/auth/blobs/{}", Sha256Digest::of(&payload)),
        Reply::ok(payload),
    );
    let (_, key) = support::cosign_key();
    let err = fetcher(&f.pki, r#"{"auths":{}}"#)
        .fetch_with(
            &artifact,
            &Sha256Digest::of(PLUGIN),
            &f.store,
            None,
            Some(&key),
        )
        .await
        .expect_err("no signature to verify");
    assert_eq!(err.label(), "signature", "{err}");
    assert!(err.to_string().contains("larger than 8192 bytes"), "{err}");
}
