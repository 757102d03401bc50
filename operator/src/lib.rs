//! The Hotload operator: the `PluginRelease` API, the rollout planner, the sidecar channel
//! server, the status writer, sidecar injection and metrics.
//!
//! ```text
//!  PluginRelease ─┐                       ┌─▶ Assign{plugin, revision} to sidecars
//!  Pods (cached) ─┼─▶ planner::plan(…) ───┤   then Synced, once each stream has its set
//!  sidecar acks ──┘    (pure)             └─▶ status (server-side apply), events
//! ```

pub mod admin;
pub mod allocator;
pub mod analysis;
pub mod api;
pub mod certs;
pub mod channel;
pub mod controller;
pub mod crashloop;
pub mod credentials;
pub mod health;
pub mod inject;
pub mod kubectl;
pub mod leader;
pub mod listener;
pub mod measure;
pub mod metrics;
pub mod planner;
pub mod pods;
pub mod providers;
pub mod registry;
pub mod revision;
pub mod selector;
pub mod synced;
pub mod tls;
pub mod views;
pub mod webhook;
