//! Why a fetch failed, precisely enough to act on, and whether trying again can help.

use std::error::Error as StdError;
use std::time::Duration;

use crate::digest::Sha256Digest;

/// A failed fetch of `artifact`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The artifact reference cannot be used.
    #[error("bad artifact reference {artifact:?}: {reason}")]
    BadReference {
        /// The artifact reference.
        artifact: String,
        /// Why, in words.
        reason: String,
    },
    /// 401/403: credentials missing or refused.
    #[error("{artifact}: unauthorized (HTTP {status}): check the pull secret")]
    Unauthorized {
        /// The artifact reference.
        artifact: String,
        /// HTTP status code.
        status: u16,
    },
    /// 404.
    #[error("{artifact}: not found (HTTP 404)")]
    NotFound {
        /// The artifact reference.
        artifact: String,
    },
    /// 5xx or 429, still failing after every attempt.
    #[error("{artifact}: server error (HTTP {status})")]
    Server {
        /// The artifact reference.
        artifact: String,
        /// HTTP status code.
        status: u16,
    },
    /// Any other unexpected HTTP status.
    #[error("{artifact}: unexpected HTTP status {status}")]
    Status {
        /// The artifact reference.
        artifact: String,
        /// HTTP status code.
        status: u16,
    },
    /// TLS handshake or certificate verification failed.
    #[error("{artifact}: TLS failure: {reason}")]
    Tls {
        /// The artifact reference.
        artifact: String,
        /// Why, in words.
        reason: String,
    },
    /// Connect, response or body exceeded its timeout.
    #[error("{artifact}: timed out after {after:?} ({phase})")]
    Timeout {
        /// The artifact reference.
        artifact: String,
        /// The load step.
        phase: &'static str,
        /// The timeout that expired.
        after: Duration,
    },
    /// The peer reset the connection.
    #[error("{artifact}: connection reset by peer after {received} bytes")]
    ConnectionReset {
        /// The artifact reference.
        artifact: String,
        /// Bytes received.
        received: u64,
    },
    /// Could not connect at all.
    #[error("{artifact}: cannot connect: {reason}")]
    Connect {
        /// The artifact reference.
        artifact: String,
        /// Why, in words.
        reason: String,
    },
    /// The artifact is larger than the limit.
    #[error("{artifact}: too large: {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The artifact reference.
        artifact: String,
        /// Bytes announced or received so far.
        size: u64,
        /// The configured limit in bytes.
        limit: u64,
    },
    /// A response that is not the artifact (a manifest, a token, a signature) is larger
    /// than any real one: it is not read into memory.
    #[error("{artifact}: {what} is larger than {limit} bytes")]
    Oversized {
        /// The artifact reference.
        artifact: String,
        /// What was being read, with its URL.
        what: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// The registry's manifest cannot be used (not JSON, an image index, no layers).
    #[error("{artifact}: unusable manifest: {reason}")]
    BadManifest {
        /// The artifact reference.
        artifact: String,
        /// Why, in words.
        reason: String,
    },
    /// Authorization at the registry failed for a reason a status code does not say (the
    /// token service refused, or lives on another host and gets no credentials).
    #[error("{artifact}: unauthorized: {reason}")]
    Auth {
        /// The artifact reference.
        artifact: String,
        /// Why, in words.
        reason: String,
    },
    /// The body ended before the announced length.
    #[error("{artifact}: truncated download: got {received} of {expected} bytes")]
    Truncated {
        /// The artifact reference.
        artifact: String,
        /// Bytes received.
        received: u64,
        /// What was expected.
        expected: u64,
    },
    /// The bytes do not match the pinned digest.
    #[error("{artifact}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The artifact reference.
        artifact: String,
        /// What was expected.
        expected: Sha256Digest,
        /// What was found.
        actual: Sha256Digest,
    },
    /// The registry answered, but not with what the release names (the manifest holds no
    /// layer with the digest): asking again gets the same answer, so it is not retried.
    #[error("{artifact}: {reason}")]
    NoSuchLayer {
        /// The artifact reference.
        artifact: String,
        /// Why, in words.
        reason: String,
    },
    /// Other transport or registry errors.
    #[error("{artifact}: {reason}")]
    Other {
        /// The artifact reference.
        artifact: String,
        /// Why, in words.
        reason: String,
    },
    /// The release asks for a cosign signature and the artifact has none that verifies.
    #[error("{artifact}: signature: {reason}")]
    Signature {
        /// The artifact reference.
        artifact: String,
        /// Why, in words (unsigned, wrong key, …).
        reason: String,
    },
    /// The local store failed.
    #[error("{artifact}: {reason}")]
    Store {
        /// The artifact reference.
        artifact: String,
        /// Why, in words.
        reason: String,
    },
}

impl FetchError {
    /// Whether another attempt may succeed. Pure; 4xx, TLS, size and digest failures are
    /// answers, not accidents, so retrying them only delays the `Failed`.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            FetchError::Server { .. }
                | FetchError::Timeout { .. }
                | FetchError::ConnectionReset { .. }
                | FetchError::Connect { .. }
                | FetchError::Truncated { .. }
                | FetchError::Other { .. }
        )
    }

    /// A short stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            FetchError::BadReference { .. } => "bad_reference",
            FetchError::Unauthorized { .. } => "unauthorized",
            FetchError::NotFound { .. } => "not_found",
            FetchError::Server { .. } => "server_error",
            FetchError::Status { .. } => "unexpected_status",
            FetchError::Tls { .. } => "tls",
            FetchError::Timeout { .. } => "timeout",
            FetchError::ConnectionReset { .. } => "connection_reset",
            FetchError::Connect { .. } => "connect",
            FetchError::TooLarge { .. } | FetchError::Oversized { .. } => "too_large",
            FetchError::BadManifest { .. } => "bad_manifest",
            FetchError::Auth { .. } => "unauthorized",
            FetchError::Truncated { .. } => "truncated",
            FetchError::DigestMismatch { .. } => "digest_mismatch",
            FetchError::NoSuchLayer { .. } => "no_such_layer",
            FetchError::Other { .. } => "other",
            FetchError::Signature { .. } => "signature",
            FetchError::Store { .. } => "store",
        }
    }
}

/// Maps an HTTP status to the failure it means (`None` for success). Pure.
pub fn status_failure(artifact: &str, status: u16) -> Option<FetchError> {
    let artifact = artifact.to_string();
    match status {
        200..=299 => None,
        401 | 403 => Some(FetchError::Unauthorized { artifact, status }),
        404 => Some(FetchError::NotFound { artifact }),
        429 | 500..=599 => Some(FetchError::Server { artifact, status }),
        _ => Some(FetchError::Status { artifact, status }),
    }
}

/// What a transport error chain says about the cause. Pure: walks `source()` only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportCause {
    /// A rustls error somewhere in the chain.
    Tls(String),
    /// An `io::Error` of kind `ConnectionReset`.
    Reset,
    /// An `io::Error` of kind `TimedOut`.
    TimedOut,
    /// Anything else, with the whole chain rendered.
    Other(String),
}

/// Classifies an error chain (reqwest → hyper → io/rustls).
pub fn transport_cause(err: &(dyn StdError + 'static)) -> TransportCause {
    let mut chain = Vec::new();
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return TransportCause::Tls(tls.to_string());
        }
        let mut next = e.source();
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionReset => return TransportCause::Reset,
                std::io::ErrorKind::TimedOut => return TransportCause::TimedOut,
                _ => {}
            }
            // A custom io::Error hides its payload from `source()`; rustls errors travel
            // that way (sometimes io inside io), so look inside explicitly.
            if let Some(inner) = io.get_ref() {
                next = Some(inner as &(dyn StdError + 'static));
            }
        }
        chain.push(e.to_string());
        cur = next;
    }
    chain.dedup();
    TransportCause::Other(chain.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrap(Box<dyn StdError + Send + Sync>);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("request failed")
        }
    }
    impl StdError for Wrap {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn statuses_map_to_reasons() {
        assert_eq!(status_failure("a", 200), None);
        assert!(matches!(
            status_failure("a", 401),
            Some(FetchError::Unauthorized { status: 401, .. })
        ));
        assert!(matches!(
            status_failure("a", 403),
            Some(FetchError::Unauthorized { .. })
        ));
        assert!(matches!(
            status_failure("a", 404),
            Some(FetchError::NotFound { .. })
        ));
        assert!(matches!(
            status_failure("a", 503),
            Some(FetchError::Server { status: 503, .. })
        ));
        assert!(matches!(
            status_failure("a", 418),
            Some(FetchError::Status { .. })
        ));
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let a = || "a".to_string();
        assert!(
            FetchError::Server {
                artifact: a(),
                status: 500
            }
            .retryable()
        );
        assert!(
            FetchError::ConnectionReset {
                artifact: a(),
                received: 0
            }
            .retryable()
        );
        assert!(!FetchError::NotFound { artifact: a() }.retryable());
        assert!(
            !FetchError::Tls {
                artifact: a(),
                reason: String::new()
            }
            .retryable()
        );
        assert!(
            !FetchError::TooLarge {
                artifact: a(),
                size: 2,
                limit: 1
            }
            .retryable()
        );
        assert!(
            !FetchError::NoSuchLayer {
                artifact: a(),
                reason: "no layer with digest sha256:…".into()
            }
            .retryable()
        );
    }

    #[test]
    fn transport_cause_finds_reset_and_tls_deep_in_the_chain() {
        let reset = Wrap(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(transport_cause(&reset), TransportCause::Reset);
        let tls = Wrap(Box::new(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        )));
        assert!(
            matches!(transport_cause(&tls), TransportCause::Tls(m) if m.contains("UnknownIssuer"))
        );
        let other = Wrap(Box::new(std::io::Error::other("boom")));
        assert_eq!(
            transport_cause(&other),
            TransportCause::Other("request failed: boom".into())
        );
    }
}
