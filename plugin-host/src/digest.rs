//! The `sha256:<hex>` digest form shared with the sidecar, and the check the host repeats
//! before it compiles: the shared volume is writable by other containers of the pod.

use sha2::{Digest, Sha256};

/// Returns the 64 hex digits of a well-formed `sha256:<64 lowercase hex>` digest.
pub fn parse_sha256(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_only_lowercase_64_hex() {
        let ok = format!("sha256:{}", "a1".repeat(32));
        assert_eq!(parse_sha256(&ok), Some(&ok[7..]));
        assert_eq!(parse_sha256(&ok.to_uppercase()), None);
        assert_eq!(parse_sha256("sha256:abc"), None);
        assert_eq!(parse_sha256(&format!("sha512:{}", "a1".repeat(32))), None);
    }

    #[test]
    fn digest_of_empty_input_is_the_known_value() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
