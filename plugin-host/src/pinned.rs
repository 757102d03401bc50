//! [`Pinned`]: one revision of a plugin held for the length of a request, so every call the
//! request makes runs on the same revision even when a swap lands between two of them.
//!
//! ```text
//!  request ── host.pin("auth") ──► Pinned(r1) ── call ── call ── drop
//!  loader                 load(r2): slot.current.store(r2)   │
//!                                         (does not wait) ───┘ r1 freed here if last
//! ```
//! A pin is only an `Arc` to the revision [`PluginHost::call`](crate::PluginHost::call)
//! would have used: taking one costs the same as a call's lookup, and a swap never waits
//! for it. The price is memory: a pinned revision keeps its warm instances (pool slots)
//! until the last pin on it drops, so pin for a request, not for a connection or a stream.

use std::sync::Arc;

use crate::error::CallError;
use crate::revision::{Revision, RevisionId};

/// A guard holding one revision of a plugin: every [`call`](Pinned::call) through it runs
/// on that revision, whatever is loaded or unloaded meanwhile.
///
/// Cheap to clone (clones share the revision) and `Send + Sync`, so one request can hand it
/// to the tasks it fans out to. The revision stays alive until the last guard on it drops.
#[derive(Clone)]
pub struct Pinned {
    rev: Arc<Revision>,
}

impl Pinned {
    pub(crate) fn new(rev: Arc<Revision>) -> Self {
        Pinned { rev }
    }

    /// Calls the plugin's `handle` with `input` on the pinned revision.
    pub fn call(&self, input: &[u8]) -> Result<Vec<u8>, CallError> {
        self.rev.call(input)
    }

    /// Counts one `failed` error on the pinned revision, for a call through this pin that
    /// returned but whose answer the app could not use. It adds no call: mark each such call
    /// once, and never one that returned an error (that error is already counted). Lock-free.
    pub fn mark_failed(&self) {
        self.rev.meter.mark_failed();
    }

    /// The pinned revision's identity (plugin, revision name, digest, config).
    pub fn revision(&self) -> &RevisionId {
        &self.rev.id
    }
}

impl std::fmt::Debug for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pinned")
            .field("plugin", &self.rev.id.plugin)
            .field("revision", &self.rev.id.revision)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_can_cross_threads() {
        fn send_sync<T: Send + Sync + Clone>() {}
        send_sync::<Pinned>();
    }
}
