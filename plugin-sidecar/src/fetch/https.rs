//! One HTTPS download attempt: status check, size limit before and during the body,
//! streamed through the hash into the store's staging file.

use std::time::Duration;

use crate::assignment::Credentials;
use crate::fetch::error::{FetchError, TransportCause, status_failure, transport_cause};
use crate::store::{Staging, Store};

/// Timeouts and limits of HTTPS downloads.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// TCP + TLS connect.
    pub connect_timeout: Duration,
    /// Longest silence while reading the body.
    pub read_timeout: Duration,
    /// Whole request, body included.
    pub total_timeout: Duration,
    /// Largest artifact accepted, in bytes.
    pub max_bytes: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(300),
            max_bytes: 64 << 20,
        }
    }
}

/// Builds the HTTPS client: rustls, the platform's roots plus `extra_ca_pem` if given.
pub fn build_client(
    limits: &HttpLimits,
    extra_ca_pem: Option<&[u8]>,
) -> Result<reqwest::Client, String> {
    crate::ensure_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(limits.connect_timeout)
        .read_timeout(limits.read_timeout)
        .timeout(limits.total_timeout)
        // Artifacts are fetched from the URL given; a redirect to plain HTTP is refused.
        .https_only(true);
    if let Some(pem) = extra_ca_pem {
        let certs =
            reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("CA bundle: {e}"))?;
        if certs.is_empty() {
            return Err("CA bundle: no certificate found".into());
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| format!("HTTPS client: {e}"))
}

/// Maps a reqwest error (request or body phase) to a precise failure.
pub(crate) fn map_reqwest(
    artifact: &str,
    err: &reqwest::Error,
    limits: &HttpLimits,
    received: u64,
) -> FetchError {
    let artifact = artifact.to_string();
    match transport_cause(err) {
        TransportCause::Tls(reason) => return FetchError::Tls { artifact, reason },
        TransportCause::Reset => return FetchError::ConnectionReset { artifact, received },
        TransportCause::TimedOut => {
            return FetchError::Timeout {
                artifact,
                phase: "read",
                after: limits.read_timeout,
            };
        }
        TransportCause::Other(_) => {}
    }
    if err.is_timeout() {
        let (phase, after) = if err.is_connect() {
            ("connect", limits.connect_timeout)
        } else if received > 0 || err.is_body() {
            ("body", limits.read_timeout)
        } else {
            ("response", limits.total_timeout)
        };
        return FetchError::Timeout {
            artifact,
            phase,
            after,
        };
    }
    let reason = match transport_cause(err) {
        TransportCause::Other(chain) => chain,
        other => format!("{other:?}"),
    };
    if err.is_connect() {
        FetchError::Connect { artifact, reason }
    } else {
        FetchError::Other { artifact, reason }
    }
}

/// Downloads `url` into a staging file (not yet verified or published).
pub(crate) async fn download(
    client: &reqwest::Client,
    url: &str,
    store: &Store,
    limits: &HttpLimits,
    credentials: Option<&Credentials>,
) -> Result<Staging, FetchError> {
    let mut request = client.get(url);
    // Sent to `url`'s host only: reqwest drops Authorization on a redirect to another
    // host, port or scheme (tests/fetch_https.rs checks that it stays so).
    if let Some(c) = credentials {
        request = request.basic_auth(&c.username, Some(&c.password));
    }
    let resp = request
        .send()
        .await
        .map_err(|e| map_reqwest(url, &e, limits, 0))?;
    if let Some(err) = status_failure(url, resp.status().as_u16()) {
        return Err(err);
    }
    stage_response(resp, url, store, limits, None).await
}

/// Streams the body of `resp` (an answer for `artifact`, its status checked) into a
/// staging file, within `limits.max_bytes`; it is whole with the length the response, or
/// else `declared`, announced.
pub(crate) async fn stage_response(
    mut resp: reqwest::Response,
    artifact: &str,
    store: &Store,
    limits: &HttpLimits,
    declared: Option<u64>,
) -> Result<Staging, FetchError> {
    let expected = resp.content_length().or(declared);
    let too_large = |size| FetchError::TooLarge {
        artifact: artifact.into(),
        size,
        limit: limits.max_bytes,
    };
    if let Some(size) = expected.filter(|size| *size > limits.max_bytes) {
        return Err(too_large(size));
    }
    let store_err = |e: crate::store::StoreError| FetchError::Store {
        artifact: artifact.into(),
        reason: e.to_string(),
    };
    let mut staging = store.stage().map_err(store_err)?;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let size = staging.len() + chunk.len() as u64;
                // Chunked bodies announce no length: the limit is enforced while reading.
                if size > limits.max_bytes {
                    return Err(too_large(size));
                }
                staging.write(&chunk).map_err(store_err)?;
            }
            Ok(None) => break,
            Err(e) => return Err(body_failure(artifact, &e, limits, staging.len(), expected)),
        }
    }
    super::complete(artifact, staging, expected)
}

/// Names a failure while reading a body of which `received` of `expected` bytes came.
fn body_failure(
    artifact: &str,
    e: &reqwest::Error,
    limits: &HttpLimits,
    received: u64,
    expected: Option<u64>,
) -> FetchError {
    match (map_reqwest(artifact, e, limits, received), expected) {
        (reset @ FetchError::ConnectionReset { .. }, _) => reset,
        (timeout @ FetchError::Timeout { .. }, _) => timeout,
        (_, Some(expected)) if received < expected => FetchError::Truncated {
            artifact: artifact.into(),
            received,
            expected,
        },
        (other, _) => other,
    }
}

/// Reads the whole body of `resp` (an answer for `artifact`: `what`, with its URL) into
/// memory, refusing one larger than `limit` before or while reading it. For the small
/// documents around an artifact (manifests, tokens, signatures), never the artifact.
pub(crate) async fn read_body(
    mut resp: reqwest::Response,
    artifact: &str,
    what: &str,
    limit: usize,
    limits: &HttpLimits,
) -> Result<Vec<u8>, FetchError> {
    let oversized = || FetchError::Oversized {
        artifact: artifact.into(),
        what: what.into(),
        limit,
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(oversized());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| body_failure(artifact, &e, limits, body.len() as u64, None))?
    {
        if body.len() + chunk.len() > limit {
            return Err(oversized());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
