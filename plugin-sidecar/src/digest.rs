//! The `sha256:<hex>` digest every artifact is pinned to.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// A parsed `sha256:<64 lowercase hex>` digest.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Digest(String);

impl TryFrom<String> for Sha256Digest {
    type Error = BadDigest;
    fn try_from(s: String) -> Result<Self, BadDigest> {
        Self::parse(&s)
    }
}

impl From<Sha256Digest> for String {
    fn from(d: Sha256Digest) -> String {
        d.0
    }
}

/// The digest string is not `sha256:<64 lowercase hex>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed digest {0:?}: want sha256:<64 lowercase hex>")]
pub struct BadDigest(pub String);

impl Sha256Digest {
    /// Parses and validates a digest string.
    pub fn parse(s: &str) -> Result<Self, BadDigest> {
        let ok = s.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if ok {
            Ok(Sha256Digest(s.to_string()))
        } else {
            Err(BadDigest(s.to_string()))
        }
    }

    /// The 64 hex digits (the blob's file name).
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    /// The digest of a finished hash.
    pub fn from_hasher(h: Sha256) -> Self {
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in h.finalize() {
            s.push_str(&format!("{b:02x}"));
        }
        Sha256Digest(s)
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(bytes);
        Self::from_hasher(h)
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Sha256Digest {
    type Err = BadDigest;
    fn from_str(s: &str) -> Result<Self, BadDigest> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_canonical_sha256() {
        let d = Sha256Digest::of(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Sha256Digest::parse(&d.to_string()), Ok(d.clone()));
        assert_eq!(d.hex().len(), 64);
        assert!(Sha256Digest::parse("sha256:E3B0").is_err());
        assert!(Sha256Digest::parse(&d.to_string().to_uppercase()).is_err());
        assert!(Sha256Digest::parse("md5:abc").is_err());
    }
}
