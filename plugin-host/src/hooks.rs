//! Events the app can react to around a swap (metrics, logs, warming caches, alerting).
//!
//! Hooks run on the loading thread, never on a request thread. `before_unload` runs after
//! the new revision passed every check and right before the swap, so an app that flushes
//! something there knows the swap will happen.

use std::time::Duration;

use crate::cache::CacheOutcome;
use crate::error::LoadError;

/// What was swapped in.
#[derive(Debug, Clone)]
pub struct LoadEvent<'a> {
    /// Plugin slot name.
    pub plugin: &'a str,
    /// The revision now serving.
    pub revision: &'a str,
    /// The revision it replaced, if any.
    pub previous: Option<&'a str>,
    /// Whether precompiled code was reused.
    pub cache: CacheOutcome,
    /// Time the atomic swap itself took.
    pub swap: Duration,
}

/// What is about to be replaced (or removed).
#[derive(Debug, Clone)]
pub struct UnloadEvent<'a> {
    /// Plugin slot name.
    pub plugin: &'a str,
    /// The revision leaving.
    pub revision: &'a str,
    /// The revision replacing it (`None` when the plugin is removed).
    pub next: Option<&'a str>,
}

/// Callbacks around loads; every method defaults to doing nothing.
pub trait HostHooks: Send + Sync {
    /// Called right before `event.revision` stops taking new calls.
    fn before_unload(&self, _event: &UnloadEvent<'_>) {}
    /// Called right after a new revision started taking calls.
    fn after_load(&self, _event: &LoadEvent<'_>) {}
    /// Called when a load was refused; the old revision keeps serving.
    fn load_failed(&self, _plugin: &str, _revision: &str, _error: &LoadError) {}
}

/// The hooks used when the app gives none.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl HostHooks for NoHooks {}
