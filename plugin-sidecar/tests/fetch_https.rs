//! The HTTPS fetcher against a real TLS server on 127.0.0.1: every failure has its own
//! precise reason, retries are bounded, and nothing unverified reaches the store.

mod support;

use std::time::{Duration, Instant};

use hotload_sidecar::digest::Sha256Digest;
use hotload_sidecar::fetch::oci::{OciPuller, PullSecrets};
use hotload_sidecar::fetch::{FetchError, Fetcher, HttpLimits, RetryPolicy, https};
use hotload_sidecar::store::Store;
use support::{ArtifactServer, TestPki};

const PLUGIN: &[u8] = b"\0asm\x01\0\0\0 pretend this is a plugin, long enough to cut in half";

fn limits() -> HttpLimits {
    HttpLimits {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_millis(500),
        total_timeout: Duration::from_secs(3),
        max_bytes: 4096,
    }
}

fn fetcher(pki: Option<&TestPki>, attempts: u32) -> Fetcher {
    let ca = pki.map(|p| p.ca_pem.as_bytes());
    let client = https::build_client(&limits(), ca).expect("client");
    let retry = RetryPolicy {
        attempts,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(50),
    };
    Fetcher::new(
        client,
        limits(),
        retry,
        OciPuller::new(PullSecrets::default()),
    )
}

struct Fixture {
    pki: TestPki,
    server: ArtifactServer,
    _dir: tempfile::TempDir,
    store: Store,
}

async fn fixture(reset_on_abort: bool) -> Fixture {
    let pki = TestPki::generate();
    let server = ArtifactServer::start(&pki, reset_on_abort).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    Fixture {
        pki,
        server,
        _dir: dir,
        store,
    }
}

async fn fetch_err(f: &Fixture, path: &str, attempts: u32) -> FetchError {
    let url = format!("{}{path}", f.server.base);
    let digest = Sha256Digest::of(PLUGIN);
    let err = fetcher(Some(&f.pki), attempts)
        .fetch(&url, &digest, &f.store)
        .await
        .expect_err("must fail");
    assert!(
        f.store.verified_blob(&digest).is_none(),
        "nothing stored after {err}"
    );
    err
}

#[tokio::test]
async fn verified_download_is_stored_and_then_served_from_cache() {
    let f = fixture(false).await;
    let url = f.server.put("p", PLUGIN);
    let digest = Sha256Digest::of(PLUGIN);
    let got = fetcher(Some(&f.pki), 1)
        .fetch(&url, &digest, &f.store)
        .await
        .expect("fetch");
    assert!(got.downloaded);
    assert_eq!(std::fs::read(&got.path).expect("read"), PLUGIN);
    let again = fetcher(Some(&f.pki), 1)
        .fetch(&url, &digest, &f.store)
        .await
        .expect("fetch");
    assert!(!again.downloaded);
    assert_eq!(f.server.hits("/blob/p"), 1);
}

#[tokio::test]
async fn digest_mismatch_is_refused_and_not_retried() {
    let f = fixture(false).await;
    f.server.put("p", b"other bytes");
    let err = fetch_err(&f, "/blob/p", 3).await;
    assert!(matches!(err, FetchError::DigestMismatch { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("digest mismatch: expected sha256:"),
        "{err}"
    );
    assert_eq!(f.server.hits("/blob/p"), 1);
}

#[tokio::test]
async fn http_401_403_404_are_answers_not_retried() {
    let f = fixture(false).await;
    for (code, label) in [
        (401, "unauthorized"),
        (403, "unauthorized"),
        (404, "not_found"),
    ] {
        let err = fetch_err(&f, &format!("/status/{code}"), 3).await;
        assert_eq!(err.label(), label, "{err}");
        assert_eq!(f.server.hits(&format!("/status/{code}")), 1);
    }
    let err = fetch_err(&f, "/status/401", 1).await;
    assert!(
        err.to_string()
            .ends_with("unauthorized (HTTP 401): check the pull secret"),
        "{err}"
    );
}

#[tokio::test]
async fn http_5xx_is_retried_a_bounded_number_of_times() {
    let f = fixture(false).await;
    let err = fetch_err(&f, "/status/500", 3).await;
    assert!(
        matches!(err, FetchError::Server { status: 500, .. }),
        "{err}"
    );
    assert_eq!(f.server.hits("/status/500"), 3);
}

#[tokio::test]
async fn transient_5xx_recovers_on_retry() {
    let f = fixture(false).await;
    f.server.put("p", PLUGIN);
    let url = format!("{}/flaky/2/p", f.server.base);
    let got = fetcher(Some(&f.pki), 3)
        .fetch(&url, &Sha256Digest::of(PLUGIN), &f.store)
        .await
        .expect("third try");
    assert_eq!(got.attempts, 3);
}

#[tokio::test]
async fn untrusted_certificate_is_a_tls_failure() {
    let f = fixture(false).await;
    let url = f.server.put("p", PLUGIN);
    let err = fetcher(None, 3)
        .fetch(&url, &Sha256Digest::of(PLUGIN), &f.store)
        .await
        .expect_err("untrusted");
    assert!(matches!(err, FetchError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("TLS failure"), "{err}");
}

#[tokio::test]
async fn slow_server_times_out() {
    let f = fixture(false).await;
    let t = Instant::now();
    let err = fetch_err(&f, "/slow", 1).await;
    assert!(matches!(err, FetchError::Timeout { .. }), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "gave up after {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn too_large_is_refused_from_the_header_or_while_streaming() {
    let f = fixture(false).await;
    let err = fetch_err(&f, "/big/100000", 3).await;
    assert!(
        matches!(
            err,
            FetchError::TooLarge {
                size: 100000,
                limit: 4096,
                ..
            }
        ),
        "{err}"
    );
    let err = fetch_err(&f, "/big-chunked/100000", 3).await;
    assert!(
        matches!(err, FetchError::TooLarge { limit: 4096, .. }),
        "{err}"
    );
    assert_eq!(f.server.hits("/big-chunked/100000"), 1, "not retried");
}

#[tokio::test]
async fn truncated_body_is_named_and_retried() {
    let f = fixture(false).await;
    f.server.put("p", PLUGIN);
    let err = fetch_err(&f, "/truncated/p", 2).await;
    let half = (PLUGIN.len() / 2) as u64;
    assert!(
        matches!(err, FetchError::Truncated { received, expected, .. } if received <= half && expected == PLUGIN.len() as u64),
        "{err}"
    );
    assert_eq!(f.server.hits("/truncated/p"), 2);
}

#[tokio::test]
async fn connection_reset_is_named() {
    let f = fixture(true).await;
    f.server.put("p", PLUGIN);
    let err = fetch_err(&f, "/truncated/p", 1).await;
    assert!(matches!(err, FetchError::ConnectionReset { .. }), "{err}");
}

#[tokio::test]
async fn refused_connection_and_plain_http_are_named() {
    let f = fixture(false).await;
    // Bind then drop to get a port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("https://127.0.0.1:{port}/blob/p");
    let err = fetcher(Some(&f.pki), 1)
        .fetch(&url, &Sha256Digest::of(PLUGIN), &f.store)
        .await
        .expect_err("refused");
    assert!(matches!(err, FetchError::Connect { .. }), "{err}");
    let err = fetcher(Some(&f.pki), 1)
        .fetch("http://127.0.0.1/p", &Sha256Digest::of(PLUGIN), &f.store)
        .await
        .expect_err("plain http");
    assert!(matches!(err, FetchError::BadReference { .. }), "{err}");
}

#[tokio::test]
async fn a_signed_https_artifact_loads_only_with_its_key() {
    use base64::Engine as _;
    let f = fixture(false).await;
    let (signer, key) = support::cosign_key();
    let (_, other_key) = support::cosign_key();
    let url = f.server.put("p", PLUGIN);
    // What `cosign sign-blob --output-signature p.sig` writes: base64 of the signature.
    let signature =
        base64::engine::general_purpose::STANDARD.encode(signer.sign(PLUGIN).expect("sign"));
    f.server.put("p.sig", signature.as_bytes());
    let digest = Sha256Digest::of(PLUGIN);
    let fetcher = fetcher(Some(&f.pki), 1);

    fetcher
        .fetch_with(&url, &digest, &f.store, None, Some(&key))
        .await
        .expect("signed with the release's key");
    // Cached now, and still refused under another key: the cache proves the digest only.
    let err = fetcher
        .fetch_with(&url, &digest, &f.store, None, Some(&other_key))
        .await
        .expect_err("wrong key");
    assert!(matches!(err, FetchError::Signature { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("does not verify with the release's public key"),
        "{err}"
    );

    let other: &[u8] = b"\0asm\x01\0\0\0 another plugin, never signed";
    let unsigned = f.server.put("q", other);
    let err = fetcher
        .fetch_with(
            &unsigned,
            &Sha256Digest::of(other),
            &f.store,
            None,
            Some(&key),
        )
        .await
        .expect_err("unsigned");
    assert!(
        err.to_string().contains("unsigned: no signature at"),
        "{err}"
    );
    assert_eq!(err.label(), "signature");

    let err = fetcher
        .fetch_with(&url, &digest, &f.store, None, Some("not a key"))
        .await
        .expect_err("bad key");
    assert!(
        err.to_string().contains("not a usable PEM public key"),
        "{err}"
    );
}

#[tokio::test]
async fn a_signature_verified_once_verifies_its_cached_revision_with_the_server_gone() {
    use base64::Engine as _;
    let f = fixture(false).await;
    let (signer, key) = support::cosign_key();
    let (_, other_key) = support::cosign_key();
    let url = f.server.put("p", PLUGIN);
    let signature =
        base64::engine::general_purpose::STANDARD.encode(signer.sign(PLUGIN).expect("sign"));
    f.server.put("p.sig", signature.as_bytes());
    let digest = Sha256Digest::of(PLUGIN);
    let fetcher = fetcher(Some(&f.pki), 1);
    fetcher
        .fetch_with(&url, &digest, &f.store, None, Some(&key))
        .await
        .expect("signed with the release's key");
    let Fixture {
        server, store, pki, ..
    } = f;
    drop(server);
    // A client of its own: no connection to the old server is kept open in its pool.
    let fetcher = self::fetcher(Some(&pki), 1);

    // A rollback to the cached revision: no server needed, the kept signature verifies.
    let again = fetcher
        .fetch_with(&url, &digest, &store, None, Some(&key))
        .await
        .expect("verified from the store");
    assert!(!again.downloaded);
    // It proves nothing for another key: that one is looked up (and the server is gone).
    let err = fetcher
        .fetch_with(&url, &digest, &store, None, Some(&other_key))
        .await
        .expect_err("another key");
    // The server's listener may still be closing: refused or reset, it is a network error.
    assert!(
        matches!(err.label(), "connect" | "connection_reset"),
        "{err}"
    );
    // A kept signature spoiled by another container is looked up again, never trusted.
    let kept = std::fs::read_dir(store.root().join("signatures/sha256"))
        .expect("signatures")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect::<Vec<_>>();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let spoiled = br#"{"kind":"blob","signature":"MEUCIQDxRZ0s"}"#;
    std::fs::write(&kept[0], spoiled).expect("spoil");
    let err = fetcher
        .fetch_with(&url, &digest, &store, None, Some(&key))
        .await
        .expect_err("spoiled");
    // The server's listener may still be closing: refused or reset, it is a network error.
    assert!(
        matches!(err.label(), "connect" | "connection_reset"),
        "{err}"
    );
}

#[tokio::test]
async fn an_oversized_signature_is_not_read() {
    let f = fixture(false).await;
    let (_, key) = support::cosign_key();
    let url = f.server.put("p", PLUGIN);
    f.server.put("p.sig", &vec![b'A'; 8 * 1024 + 1]);
    let err = fetcher(Some(&f.pki), 1)
        .fetch_with(&url, &Sha256Digest::of(PLUGIN), &f.store, None, Some(&key))
        .await
        .expect_err("too large");
    // The limit held before the registry work too: a regression guard.
    assert!(err.to_string().contains("8192 bytes"), "{err}");
}

#[tokio::test]
async fn credentials_do_not_follow_a_redirect_to_another_host() {
    use support::recording::{RecordingServer, Reply};
    let f = fixture(false).await;
    let origin = RecordingServer::start(&f.pki).await;
    let cdn = RecordingServer::start(&f.pki).await;
    origin.reply("/p.wasm", Reply::redirect(&format!("{}/p.wasm", cdn.base)));
    cdn.reply("/p.wasm", Reply::ok(PLUGIN));
    let credentials = hotload_sidecar::assignment::Credentials {
        username: "robot".into(),
        password: "pw".into(),
    };
    fetcher(Some(&f.pki), 1)
        .fetch_with(
            &format!("{}/p.wasm", origin.base),
            &Sha256Digest::of(PLUGIN),
            &f.store,
            Some(&credentials),
            None,
        )
        .await
        .expect("followed the redirect");
    assert!(origin.authorizations("/p.wasm")[0].is_some());
    assert_eq!(cdn.authorizations("/p.wasm"), vec![None]);
}

#[tokio::test]
async fn an_abandoned_download_leaves_no_partial_file() {
    let f = fixture(false).await;
    f.server.put("p", PLUGIN);
    let patient = HttpLimits {
        read_timeout: Duration::from_secs(30),
        total_timeout: Duration::from_secs(60),
        ..limits()
    };
    let fetcher = Fetcher::new(
        https::build_client(&patient, Some(f.pki.ca_pem.as_bytes())).expect("client"),
        patient.clone(),
        RetryPolicy::default(),
        OciPuller::new(PullSecrets::default()),
    );
    let url = format!("{}/half-then-hang/p", f.server.base);
    let store = f.store.clone();
    let task =
        tokio::spawn(async move { fetcher.fetch(&url, &Sha256Digest::of(PLUGIN), &store).await });
    let tmp = f.store.root().join("tmp");
    let started = Instant::now();
    while std::fs::read_dir(&tmp).expect("tmp").count() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no download began"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // What a superseded assignment's fetch goes through: its future is dropped mid-body.
    task.abort();
    let _ = task.await;
    assert_eq!(std::fs::read_dir(&tmp).expect("tmp").count(), 0);
}
