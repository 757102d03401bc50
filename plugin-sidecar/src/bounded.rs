//! Reads of files that come from outside the sidecar (mounted Secrets and ConfigMaps, the
//! projected token, what other containers can write to the shared volume), each with a
//! ceiling: a spoiled or hostile file costs an error naming it, not the sidecar's memory.

use std::io::{self, Read as _};
use std::path::Path;

/// A Kubernetes Secret or ConfigMap holds at most 1 MiB: no mounted file is larger.
pub const MAX_MOUNTED_FILE_BYTES: u64 = 1024 * 1024;

/// Reads `path` whole; a file larger than `limit` bytes is an `InvalidData` error that says
/// so (callers name the file).
pub fn read_file(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_over_the_limit_is_refused_and_one_at_it_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, vec![b'a'; 16]).expect("write");
        assert_eq!(read_file(&path, 16).expect("at the limit").len(), 16);
        let err = read_file(&path, 15).expect_err("over the limit");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(err.to_string(), "larger than 15 bytes");
    }
}
