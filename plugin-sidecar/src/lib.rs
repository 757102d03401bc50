//! The per-pod Hotload agent: fetcher (HTTPS, OCI), verifier, on-disk store, and the app
//! channel (a Unix socket in the shared volume).
//!
//! ```text
//!   sources of assignments             agent                         app
//!   ┌──────────────────────┐  assign  ┌───────────────────────┐ Load  ┌──────────────┐
//!   │ control.rs (`load`)  │ ───────► │ fetch → verify → store│ ────► │ app_channel  │
//!   │ channel.rs (operator,│ ◄─────── │ state.json, readiness │ ◄──── │ (Unix socket)│
//!   │  gRPC)               │ outcome  └───────────────────────┘ ack   └──────────────┘
//!   └──────────────────────┘
//! ```
//! Both sources call [`agent::Agent::assign`]; the operator channel also watches
//! [`agent::Agent::subscribe_app`] to report what the app confirms.

pub mod admin;
pub mod agent;
pub mod app_channel;
pub mod assignment;
pub mod bounded;
pub mod channel;
pub mod cli;
pub mod control;
pub mod digest;
pub mod fetch;
pub mod health;
pub mod metrics;
pub use hotload_protocol as protocol;
pub mod readiness;
pub mod state;
pub mod store;
mod turns;
pub mod workers;

/// Makes ring the process's rustls provider unless one is already set. A workspace build can
/// switch on more than one provider (kube and tonic bring ring), and then rustls refuses to
/// guess; every TLS client and server in this crate calls this first.
pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
