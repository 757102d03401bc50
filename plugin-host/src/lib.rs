//! The library an application links to hot-load Wasm plugins handed to it by the sidecar.
//!
//! # Why wasmtime directly, not Extism
//! Extism wraps wasmtime and brings PDKs, but it owns the engine configuration: its plugins
//! each build their own engine-level setup, it exposes neither the pooling allocator nor a
//! shared precompiled-module cache keyed the way we need (digest + engine fingerprint), and
//! its ABI (host-managed kernel memory) costs an extra copy per call. Hotload needs exactly
//! those knobs (pooling, epochs, `InstancePre`, `Module::serialize`) and a tiny ABI that any
//! language compiling to core Wasm can implement in a few lines (see [`abi`]), so the host
//! uses wasmtime's embedding API directly.
//!
//! # Shape
//! - [`PluginHost`]: one wasmtime engine, named plugin slots; `load` / `call` / `pin` /
//!   `unload`.
//! - A slot holds its serving revision in an `ArcSwap`; a revision is a pool of warm
//!   instances (see `revision.rs` for why a pool rather than one instance per call).
//! - In-request atomicity: `call` runs on whatever serves at that instant, so two calls of
//!   one request can straddle a swap. [`PluginHost::pin`] returns a [`Pinned`] guard that
//!   holds one revision: every `pinned.call(..)` of the request runs there, the swap does
//!   not wait for it, and the old revision is freed when the last guard drops.
//!
//!   ```no_run
//!   # fn demo(host: &hotload_host::PluginHost) -> Result<(), hotload_host::CallError> {
//!   let auth = host.pin("auth")?; // one revision for the whole request
//!   let token = auth.call(b"parse")?;
//!   let verdict = auth.call(&token)?; // same revision, even if a load swapped meanwhile
//!   # let _ = verdict; Ok(()) }
//!   ```
//! - Health: every call counts on the revision it ran on (calls, errors by kind, latency in
//!   fixed buckets), lock-free; [`PluginHost::take_health`] drains the counts into the
//!   protocol's reports (see `health.rs`). [`link::Link`] is the app side of the sidecar's
//!   socket: it loads what the sidecar hands over and sends those reports once a second.
//! - Imports: sandboxed WASI preview1 only (clocks, randomness), so plugins compiled from
//!   Go, Rust or C start; no files, environment or network.
//!
//! # Limits
//! A plugin is untrusted code; every resource it can take is bounded by [`HostConfig`]:
//!
//! | what | bound | when it is exceeded |
//! |---|---|---|
//! | module size | [`HostConfig::max_module_bytes`] (64 MiB) | load refused before hashing: [`LoadError::ModuleTooLarge`] |
//! | compile time | [`HostConfig::compile_timeout`] (120 s), on a thread of its own | load fails, old revision serves: [`LoadError::CompileTimeout`]; the compile ends in the background, its result dropped |
//! | declared memories, tables, metadata | one memory, one table of [`MAX_TABLE_ELEMENTS`], [`MAX_INSTANCE_METADATA_BYTES`] of instance metadata | load refused with wasmtime's reason |
//! | linear memory | [`HostConfig::max_memory_bytes`] (64 MiB) | the guest traps: [`Fault::MemoryLimit`] |
//! | one call (request, self-check, state hand-over, start-up) | [`HostConfig::call_timeout`] (500 ms), in guest code and in WASI sleeps alike | the guest traps: [`Fault::Timeout`], the instance is replaced |
//! | calls in parallel per plugin | [`HostConfig::instances_per_revision`] (4) | the call waits up to [`HostConfig::checkout_timeout`], then [`CallError::Busy`] |
//!
//! Compile memory is bounded through the module size (the compiler's memory grows with the
//! code it is given); the compile cannot be interrupted, only abandoned. The deadline of a
//! call holds in host code too: guest code is interrupted by epochs, and the one WASI
//! function that can block, `poll_oneoff` (every language's `sleep`), is replaced by one
//! that sleeps no later than the deadline and then traps like a CPU-bound loop, so sleeping
//! plugins cannot hold the instance pool.

pub mod abi;
mod cache;
mod compile;
mod compiled;
mod digest;
mod engine;
mod error;
mod health;
mod hooks;
mod host;
mod instance;
pub mod link;
mod pinned;
mod revision;
mod teardown;
mod wasi_poll;

pub use cache::CacheOutcome;
pub use digest::{parse_sha256, sha256_digest};
pub use engine::{HostConfig, MAX_INSTANCE_METADATA_BYTES, MAX_TABLE_ELEMENTS};
pub use error::{CallError, Fault, GuestFailure, LoadError, Phase, classify};
pub use hooks::{HostHooks, LoadEvent, NoHooks, UnloadEvent};
pub use host::{HostError, LoadPlan, LoadRequest, Loaded, PluginHost, StateHandover, plan_load};
pub use pinned::Pinned;
pub use revision::RevisionId;

/// The app socket protocol's types (`hotload-protocol`): messages, and the health counts
/// [`PluginHost::take_health`] returns.
pub use hotload_protocol as protocol;
