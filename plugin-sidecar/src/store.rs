//! The content-addressed artifact store on the pod's shared volume.
//!
//! ```text
//!  <root>/blobs/sha256/<hex>   verified artifacts, read-only, named by their digest
//!  <root>/signatures/sha256/<hex>.<key id>.json
//!                              the signature of a blob that verified with a key, kept so a
//!                              cached revision verifies again without its registry
//!  <root>/tmp/                 downloads in progress (emptied at start)
//!  <root>/state.json           SidecarState: assigned / loaded / history
//! ```
//! A blob only ever appears under its name by `rename` after its hash matched and its bytes
//! were fsynced, so any file under `blobs/` is complete; it is re-hashed before reuse anyway,
//! because other containers of the pod can write to the volume.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::digest::Sha256Digest;
use crate::state::SidecarState;

/// Store failures, naming the file involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O step failed.
    #[error("store: {action} {path}: {source}")]
    Io {
        /// The I/O step that failed.
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The bytes written do not hash to the expected digest.
    #[error("digest mismatch: expected {expected}, got {actual} ({bytes} bytes)")]
    DigestMismatch {
        /// What was expected.
        expected: Sha256Digest,
        /// What was found.
        actual: Sha256Digest,
        /// Bytes written.
        bytes: u64,
    },
    /// The state file exists but cannot be parsed.
    #[error("store: state file {path} is corrupt: {reason}")]
    CorruptState {
        /// The file involved.
        path: PathBuf,
        /// Why, in words.
        reason: String,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The store rooted at one directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A download in progress: bytes go to a temp file and through the hash at once.
pub struct Staging {
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    bytes: u64,
}

impl Staging {
    /// Appends a chunk.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
        let path = self.file.path().to_path_buf();
        self.file.write_all(chunk).map_err(io_err("write", &path))
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.bytes
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
}

/// The largest state file the sidecar reads: a few plugins with a short history each take a
/// few KiB; anything near this was not written by the sidecar.
pub const MAX_STATE_BYTES: u64 = 1024 * 1024;

impl Store {
    /// Opens (creating) the store and drops leftovers of interrupted downloads.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let store = Store {
            root: root.to_path_buf(),
        };
        let tmp = store.tmp_dir();
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err("clean", &tmp))?;
        }
        for dir in [store.blob_dir(), store.signature_dir(), tmp] {
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn signature_dir(&self) -> PathBuf {
        self.root.join("signatures").join("sha256")
    }

    /// Where the signature of blob `digest` that verified with the key `key_id` is kept.
    pub fn signature_path(&self, digest: &Sha256Digest, key_id: &str) -> PathBuf {
        self.signature_dir()
            .join(format!("{}.{key_id}.json", digest.hex()))
    }

    /// Keeps `bytes` as that signature, replacing it whole (temp file, rename). Not fsynced:
    /// a signature lost in a crash is fetched again.
    pub fn save_signature(
        &self,
        digest: &Sha256Digest,
        key_id: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let path = self.signature_path(digest, key_id);
        let dir = self.tmp_dir();
        let mut tmp =
            tempfile::NamedTempFile::new_in(&dir).map_err(io_err("create temp file in", &dir))?;
        tmp.write_all(bytes).map_err(io_err("write", &path))?;
        tmp.persist(&path).map_err(|e| StoreError::Io {
            action: "rename into",
            path: path.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    /// The kept signature of `digest` for `key_id`, unless there is none or it is larger
    /// than `limit` bytes (other containers can write the volume: it is checked anyway).
    pub fn signature(&self, digest: &Sha256Digest, key_id: &str, limit: u64) -> Option<Vec<u8>> {
        crate::bounded::read_file(&self.signature_path(digest, key_id), limit).ok()
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where the state lives.
    pub fn state_path(&self) -> PathBuf {
        self.root.join("state.json")
    }

    /// Where the blob with `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.blob_dir().join(digest.hex())
    }

    /// The blob's path if it exists and still hashes to its digest; a corrupt blob is removed.
    pub fn verified_blob(&self, digest: &Sha256Digest) -> Option<PathBuf> {
        let path = self.blob_path(digest);
        let mut file = File::open(&path).ok()?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buf[..n]),
                Err(_) => return None,
            }
        }
        let actual = Sha256Digest::from_hasher(hasher);
        if &actual == digest {
            return Some(path);
        }
        tracing::warn!(path = %path.display(), expected = %digest, actual = %actual, "removing corrupt cached artifact");
        let _ = fs::remove_file(&path);
        None
    }

    /// Starts a download.
    pub fn stage(&self) -> Result<Staging, StoreError> {
        let dir = self.tmp_dir();
        let file =
            tempfile::NamedTempFile::new_in(&dir).map_err(io_err("create temp file in", &dir))?;
        Ok(Staging {
            file,
            hasher: Sha256::new(),
            bytes: 0,
        })
    }

    /// Verifies and publishes a download; on mismatch the temp file is deleted.
    pub fn commit(&self, staging: Staging, expected: &Sha256Digest) -> Result<PathBuf, StoreError> {
        let Staging {
            file,
            hasher,
            bytes,
        } = staging;
        let actual = Sha256Digest::from_hasher(hasher);
        if &actual != expected {
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual,
                bytes,
            });
        }
        let tmp = file.path().to_path_buf();
        file.as_file().sync_all().map_err(io_err("fsync", &tmp))?;
        // Read-only, and readable by the app whatever user it runs as (a temp file is
        // created 0600, for the sidecar's user alone).
        fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o444))
            .map_err(io_err("chmod", &tmp))?;
        let dest = self.blob_path(expected);
        file.persist(&dest).map_err(|e| StoreError::Io {
            action: "rename into",
            path: dest.clone(),
            source: e.error,
        })?;
        sync_dir(&self.blob_dir())?;
        Ok(dest)
    }

    /// Reads the persisted state (empty when there is none yet). A file larger than
    /// [`MAX_STATE_BYTES`] is corrupt: the sidecar never writes one.
    pub fn load_state(&self) -> Result<SidecarState, StoreError> {
        use std::io::Read as _;
        let path = self.state_path();
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SidecarState::default()),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_STATE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err("read", &path))?;
        if bytes.len() as u64 > MAX_STATE_BYTES {
            return Err(StoreError::CorruptState {
                path,
                reason: format!("larger than {MAX_STATE_BYTES} bytes"),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| StoreError::CorruptState {
            path,
            reason: e.to_string(),
        })
    }

    /// Moves an unreadable state file aside (`state.json.corrupt`, kept for a post-mortem)
    /// so the sidecar can start on an empty state; returns where it went.
    pub fn quarantine_state(&self) -> Result<PathBuf, StoreError> {
        let path = self.state_path();
        let aside = path.with_extension("json.corrupt");
        fs::rename(&path, &aside).map_err(io_err("move aside", &path))?;
        Ok(aside)
    }

    /// Persists the state atomically (temp file, fsync, rename, fsync dir).
    pub fn save_state(&self, state: &SidecarState) -> Result<(), StoreError> {
        let path = self.state_path();
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| StoreError::CorruptState {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        // In tmp/, which open() empties: a crash between write and rename leaves nothing
        // behind in the root.
        let dir = self.tmp_dir();
        let mut tmp =
            tempfile::NamedTempFile::new_in(&dir).map_err(io_err("create temp file in", &dir))?;
        tmp.write_all(&bytes).map_err(io_err("write", &path))?;
        tmp.as_file().sync_all().map_err(io_err("fsync", &path))?;
        tmp.persist(&path).map_err(|e| StoreError::Io {
            action: "rename into",
            path: path.clone(),
            source: e.error,
        })?;
        sync_dir(&self.root)
    }

    /// Deletes every blob whose digest is not in `keep`, and the signatures kept for them;
    /// returns how many blobs.
    pub fn gc(&self, keep: &BTreeSet<Sha256Digest>) -> Result<usize, StoreError> {
        self.gc_signatures(keep);
        let dir = self.blob_dir();
        let mut removed = 0;
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(digest) = Sha256Digest::parse(&format!("sha256:{name}")) else {
                // Not ours (an app's cache file, an editor's backup): never delete it.
                tracing::debug!(name, "ignoring foreign entry in the blob directory");
                continue;
            };
            if !keep.contains(&digest) {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                tracing::info!(path = %path.display(), "garbage-collected artifact");
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Best effort: a signature left behind costs a few bytes and never verifies a blob
    /// it does not sign.
    fn gc_signatures(&self, keep: &BTreeSet<Sha256Digest>) {
        let Ok(entries) = fs::read_dir(self.signature_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let hex = name.split('.').next().unwrap_or_default();
            let Ok(digest) = Sha256Digest::parse(&format!("sha256:{hex}")) else {
                continue;
            };
            if !keep.contains(&digest)
                && let Err(e) = fs::remove_file(entry.path())
            {
                tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a kept signature");
            }
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    // The rename is only durable once the directory entry is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync dir", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::RevisionRecord;

    fn put(store: &Store, bytes: &[u8]) -> Sha256Digest {
        let d = Sha256Digest::of(bytes);
        let mut s = store.stage().expect("stage");
        s.write(bytes).expect("write");
        store.commit(s, &d).expect("commit");
        d
    }

    #[test]
    fn commit_publishes_only_matching_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let d = put(&store, b"plugin");
        assert_eq!(store.verified_blob(&d), Some(store.blob_path(&d)));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(store.blob_path(&d))
                .expect("stat")
                .permissions(),
        );
        assert_eq!(
            mode & 0o777,
            0o444,
            "read-only, readable by an app of any user"
        );
        let mut s = store.stage().expect("stage");
        s.write(b"other").expect("write");
        let err = store.commit(s, &d).expect_err("mismatch");
        assert!(
            err.to_string()
                .starts_with("digest mismatch: expected sha256:"),
            "{err}"
        );
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).expect("tmp").count(),
            0,
            "temp file removed"
        );
    }

    #[test]
    fn corrupt_blob_is_not_offered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let d = put(&store, b"plugin");
        let path = store.blob_path(&d);
        fs::remove_file(&path).expect("rm");
        fs::write(&path, b"tampered").expect("write");
        assert_eq!(store.verified_blob(&d), None);
        assert!(!path.exists());
    }

    #[test]
    fn gc_keeps_retained_blobs_and_state_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let (a, b) = (put(&store, b"a"), put(&store, b"b"));
        let mut state = SidecarState::default();
        let rec = RevisionRecord {
            revision: "r1".into(),
            artifact: "x".into(),
            digest: b.clone(),
            config: serde_json::Value::Null,
        };
        state.assign("p", rec, 3);
        store.save_state(&state).expect("save");
        assert_eq!(store.gc(&state.retained_digests()).expect("gc"), 1);
        assert_eq!(store.verified_blob(&a), None);
        assert!(store.verified_blob(&b).is_some());
        fs::create_dir(dir.path().join("blobs/sha256/__pycache__")).expect("foreign dir");
        assert_eq!(
            store
                .gc(&state.retained_digests())
                .expect("gc ignores foreign entries"),
            0
        );
        let reopened = Store::open(dir.path()).expect("reopen");
        assert_eq!(reopened.load_state().expect("load"), state);
    }
}
