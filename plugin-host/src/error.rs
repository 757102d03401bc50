//! Errors of the host, each naming the plugin, the revision and the cause, and a pure
//! classifier that turns a wasmtime failure into the precise reason the sidecar reports.

use std::fmt;

use hotload_protocol::ErrorKind;

/// Why a guest call (self-check, `handle`, state hand-over…) did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The call ran past its deadline and was interrupted (epoch interruption).
    Timeout,
    /// The guest asked for more memory than the host allows.
    MemoryLimit {
        /// Bytes the guest asked the memory to grow to.
        requested: usize,
        /// The configured ceiling.
        limit: usize,
    },
    /// The guest trapped (unreachable, out-of-bounds access, …).
    Trap(String),
    /// Anything else wasmtime reported.
    Other(String),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Timeout => write!(f, "deadline exceeded (interrupted)"),
            Fault::MemoryLimit { requested, limit } => {
                write!(
                    f,
                    "memory limit exceeded: asked for {requested} bytes, limit is {limit} bytes"
                )
            }
            Fault::Trap(t) => write!(f, "trap: {t}"),
            Fault::Other(e) => write!(f, "{e}"),
        }
    }
}

/// Raised by the host's resource limiter; found again by [`classify`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemoryLimitExceeded {
    pub requested: usize,
    pub limit: usize,
}

impl fmt::Display for MemoryLimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "memory limit exceeded: asked for {} bytes, limit is {} bytes",
            self.requested, self.limit
        )
    }
}

impl std::error::Error for MemoryLimitExceeded {}

/// Turns a wasmtime error into a [`Fault`]. Pure: looks only at the error chain.
pub fn classify(err: &wasmtime::Error) -> Fault {
    if let Some(m) = err.downcast_ref::<MemoryLimitExceeded>() {
        return Fault::MemoryLimit {
            requested: m.requested,
            limit: m.limit,
        };
    }
    match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => Fault::Timeout,
        Some(trap) => Fault::Trap(trap.to_string()),
        None => Fault::Other(format!("{err:#}")),
    }
}

/// A load that did not happen; the previous revision (if any) keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes handed over do not hash to the digest in the request.
    #[error(
        "plugin {plugin} revision {revision}: digest mismatch: expected {expected}, got {actual}"
    )]
    DigestMismatch {
        /// Plugin slot name.
        plugin: String,
        /// Revision name.
        revision: String,
        /// What was expected.
        expected: String,
        /// What was found.
        actual: String,
    },
    /// The digest is not `sha256:<64 hex>`.
    #[error(
        "plugin {plugin} revision {revision}: malformed digest {digest:?}: want sha256:<64 lowercase hex>"
    )]
    BadDigest {
        /// Plugin slot name.
        plugin: String,
        /// Revision name.
        revision: String,
        /// The digest as given.
        digest: String,
    },
    /// The artifact file could not be read.
    #[error("plugin {plugin} revision {revision}: cannot read {path}: {source}")]
    Read {
        /// Plugin slot name.
        plugin: String,
        /// Revision name.
        revision: String,
        /// The file involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The module is larger than `HostConfig::max_module_bytes`; refused before hashing.
    #[error(
        "plugin {plugin} revision {revision}: module is {size} bytes, over the limit of {limit} bytes"
    )]
    ModuleTooLarge {
        /// Plugin slot name.
        plugin: String,
        /// Revision name.
        revision: String,
        /// Size of the module handed over.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Compiling took longer than `HostConfig::compile_timeout`; the compile was abandoned.
    #[error(
        "plugin {plugin} revision {revision}: compile did not finish within its budget of {budget_ms} ms"
    )]
    CompileTimeout {
        /// Plugin slot name.
        plugin: String,
        /// Revision name.
        revision: String,
        /// The configured budget, in milliseconds.
        budget_ms: u128,
    },
    /// No thread could be started to compile on.
    #[error("plugin {plugin} revision {revision}: cannot start a compile thread: {source}")]
    CompileThread {
        /// Plugin slot name.
        plugin: String,
        /// Revision name.
        revision: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bytes are not a valid Wasm module for this engine.
    #[error("plugin {plugin} revision {revision}: invalid wasm: {reason}")]
    InvalidWasm {
        /// Plugin slot name.
        plugin: String,
        /// Revision name.
        revision: String,
        /// Why, in words.
        reason: String,
    },
    /// The module does not follow the plugin ABI.
    #[error("plugin {plugin} revision {revision}: ABI violation: {reason}")]
    Abi {
        /// Plugin slot name.
        plugin: String,
        /// Revision name.
        revision: String,
        /// Why, in words.
        reason: String,
    },
    /// Instantiation failed (imports, memory limit at start, start function trap…).
    #[error("plugin {plugin} revision {revision}: instantiation failed: {fault}")]
    Instantiate {
        /// Plugin slot name.
        plugin: String,
        /// Revision name.
        revision: String,
        /// How the guest failed.
        fault: Fault,
    },
    /// A guest export used during the load failed or returned a non-zero status.
    #[error("plugin {plugin} revision {revision}: {phase} failed: {detail}")]
    Guest {
        /// Plugin slot name.
        plugin: String,
        /// Revision name.
        revision: String,
        /// The load step.
        phase: Phase,
        /// How the guest export failed.
        detail: GuestFailure,
    },
    /// The host's plugin table is full.
    #[error("plugin {plugin}: cannot load more than {max} plugins")]
    TooManyPlugins {
        /// Plugin slot name.
        plugin: String,
        /// The configured maximum.
        max: usize,
    },
}

/// The load step a guest failure happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The `configure` export.
    Configure,
    /// The `self_check` export.
    SelfCheck,
    /// The old revision's `save_state` export.
    SaveState,
    /// The new revision's `restore_state` export.
    RestoreState,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Configure => "configure",
            Phase::SelfCheck => "self-check",
            Phase::SaveState => "save-state",
            Phase::RestoreState => "restore-state",
        })
    }
}

/// How a guest export failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestFailure {
    /// It returned this non-zero status.
    Status(i32),
    /// It did not return.
    Fault(Fault),
    /// It returned a `(ptr, len)` outside its memory.
    BadRange {
        /// Pointer the guest returned.
        ptr: u32,
        /// Length the guest returned.
        len: u32,
    },
}

impl fmt::Display for GuestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestFailure::Status(s) => write!(f, "returned status {s}"),
            GuestFailure::Fault(fault) => write!(f, "{fault}"),
            GuestFailure::BadRange { ptr, len } => {
                write!(f, "returned range ptr={ptr} len={len} outside its memory")
            }
        }
    }
}

/// A request the current revision could not serve.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No revision of this plugin is loaded.
    #[error("plugin {plugin}: not loaded")]
    NotLoaded {
        /// Plugin slot name.
        plugin: String,
    },
    /// Every instance stayed busy for the whole wait.
    #[error("plugin {plugin} revision {revision}: no free instance within {waited_ms} ms")]
    Busy {
        /// Plugin slot name.
        plugin: String,
        /// Revision name.
        revision: String,
        /// How long the call waited, in milliseconds.
        waited_ms: u128,
    },
    /// The guest failed on this request; the instance is replaced before reuse.
    #[error("plugin {plugin} revision {revision}: handle failed: {failure}")]
    Guest {
        /// Plugin slot name.
        plugin: String,
        /// Revision name.
        revision: String,
        /// How the guest failed.
        failure: GuestFailure,
    },
    /// The instance could not be re-created after a fault.
    #[error("plugin {plugin} revision {revision}: re-instantiation failed: {fault}")]
    Reinstantiate {
        /// Plugin slot name.
        plugin: String,
        /// Revision name.
        revision: String,
        /// How the guest failed.
        fault: Fault,
    },
}

impl CallError {
    /// How this failed call counts in health reports; `None` for [`CallError::NotLoaded`],
    /// which ran on no revision. A trap, a bad result range or another guest failure is
    /// `trap`; the deadline is `timeout`; the memory limit is `memory`; no free instance in
    /// time is `failed`. Pure.
    pub fn health_kind(&self) -> Option<ErrorKind> {
        let fault = match self {
            CallError::NotLoaded { .. } => return None,
            CallError::Busy { .. } => return Some(ErrorKind::Failed),
            CallError::Guest {
                failure: GuestFailure::Fault(fault),
                ..
            }
            | CallError::Reinstantiate { fault, .. } => fault,
            CallError::Guest {
                failure: GuestFailure::BadRange { .. },
                ..
            } => return Some(ErrorKind::Trap),
            // `handle` has no status; a status from it would be a host bug, not a trap.
            CallError::Guest {
                failure: GuestFailure::Status(_),
                ..
            } => return Some(ErrorKind::Failed),
        };
        Some(match fault {
            Fault::Timeout => ErrorKind::Timeout,
            Fault::MemoryLimit { .. } => ErrorKind::Memory,
            Fault::Trap(_) | Fault::Other(_) => ErrorKind::Trap,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_errors_count_by_kind() {
        let (plugin, revision) = (String::from("p"), String::from("r"));
        let guest = |failure| CallError::Guest {
            plugin: plugin.clone(),
            revision: revision.clone(),
            failure,
        };
        let kind = |e: CallError| e.health_kind();
        assert_eq!(
            kind(CallError::NotLoaded {
                plugin: plugin.clone()
            }),
            None
        );
        assert_eq!(
            kind(CallError::Busy {
                plugin: plugin.clone(),
                revision: revision.clone(),
                waited_ms: 1
            }),
            Some(ErrorKind::Failed)
        );
        assert_eq!(
            kind(guest(GuestFailure::Fault(Fault::Trap(
                "unreachable".into()
            )))),
            Some(ErrorKind::Trap)
        );
        assert_eq!(
            kind(guest(GuestFailure::BadRange { ptr: 1, len: 2 })),
            Some(ErrorKind::Trap)
        );
        assert_eq!(
            kind(guest(GuestFailure::Fault(Fault::Timeout))),
            Some(ErrorKind::Timeout)
        );
        assert_eq!(
            kind(CallError::Reinstantiate {
                plugin: plugin.clone(),
                revision: revision.clone(),
                fault: Fault::MemoryLimit {
                    requested: 2,
                    limit: 1
                }
            }),
            Some(ErrorKind::Memory)
        );
    }

    #[test]
    fn classify_finds_memory_limit_through_context() {
        let e = wasmtime::Error::new(MemoryLimitExceeded {
            requested: 10,
            limit: 5,
        })
        .context("while calling self_check");
        assert_eq!(
            classify(&e),
            Fault::MemoryLimit {
                requested: 10,
                limit: 5
            }
        );
    }

    #[test]
    fn classify_maps_interrupt_to_timeout_and_other_traps_to_trap() {
        assert_eq!(
            classify(&wasmtime::Error::new(wasmtime::Trap::Interrupt)),
            Fault::Timeout
        );
        let f = classify(&wasmtime::Error::new(
            wasmtime::Trap::UnreachableCodeReached,
        ));
        assert!(
            matches!(f, Fault::Trap(ref s) if s.contains("unreachable")),
            "{f:?}"
        );
        assert!(matches!(
            classify(&wasmtime::Error::msg("boom")),
            Fault::Other(_)
        ));
    }
}
