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
//! - Imports: sandboxed WASI preview1 only (clocks, randomness), so plugins compiled from
//!   Go, Rust or C start; no files, environment or network.
//! - Limits: a pooling allocator sized from [`HostConfig`], a per-store memory ceiling that
//!   traps with a precise reason, and epoch deadlines on every guest call.

pub mod abi;
mod cache;
mod digest;
mod engine;
mod error;
mod hooks;
mod host;
mod instance;
mod pinned;
mod revision;

pub use cache::CacheOutcome;
pub use digest::{parse_sha256, sha256_digest};
pub use engine::HostConfig;
pub use error::{CallError, Fault, GuestFailure, LoadError, Phase, classify};
pub use hooks::{HostHooks, LoadEvent, NoHooks, UnloadEvent};
pub use host::{HostError, LoadPlan, LoadRequest, Loaded, PluginHost, StateHandover, plan_load};
pub use pinned::Pinned;
pub use revision::RevisionId;
