//! Demo application for Hotload: an HTTP service whose request handling runs through a
//! Wasm plugin that the sidecar hands over and `hotload-host` hot-loads.

pub mod harness;
pub mod http;
pub mod sidecar_link;
