//! Demo application for Hotload: an HTTP service whose request handling runs through a
//! Wasm plugin that the sidecar hands over and `hotload-host` hot-loads. One process by
//! default; `--workers N` runs N pre-forked worker processes on one port (see [`prefork`]).
//! The sidecar link (loads, health reports) is `hotload_host::link`, started in [`serve`].

pub mod cli;
pub mod harness;
pub mod http;
pub mod prefork;
pub mod serve;
