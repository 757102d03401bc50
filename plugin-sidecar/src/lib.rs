//! The per-pod Hotload agent: fetcher (HTTPS, OCI), verifier, on-disk store, and the app
//! channel (a Unix socket in the shared volume).
//!
//! ```text
//!   sources of assignments             agent                         app
//!   ┌──────────────────────┐  assign  ┌───────────────────────┐ Load  ┌──────────────┐
//!   │ control.rs (`load`)  │ ───────► │ fetch → verify → store│ ────► │ app_channel  │
//!   │ operator channel     │ ◄─────── │ state.json, readiness │ ◄──── │ (Unix socket)│
//!   │ (future, one module) │ outcome  └───────────────────────┘ ack   └──────────────┘
//!   └──────────────────────┘
//! ```
//! The operator-facing channel will be one more module calling [`agent::Agent::assign`] and
//! watching [`agent::Agent::subscribe_app`]; nothing else needs to change for it.

pub mod admin;
pub mod agent;
pub mod app_channel;
pub mod assignment;
pub mod cli;
pub mod control;
pub mod digest;
pub mod fetch;
pub mod protocol;
pub mod readiness;
pub mod state;
pub mod store;

/// Makes ring the process's rustls provider unless one is already set. A workspace build can
/// switch on more than one provider (kube and tonic bring ring), and then rustls refuses to
/// guess; every TLS client and server in this crate calls this first.
pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
