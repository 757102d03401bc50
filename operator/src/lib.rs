//! The Hotload operator: the `PluginRelease` API, the rollout engine, the sidecar channel
//! server, the status writer, sidecar injection and metrics.
//!
//! Not built yet: the [operator] issue fills this crate in. It is a workspace member now
//! so the workspace, CI and the e2e cluster's image map have their final shape.
