//! One loaded revision of a plugin: a fixed pool of warm instances that calls check out.
//!
//! Why a pool of long-lived instances and not an instance per call: plugins keep state
//! (caches, counters) that the ABI lets them hand over across a swap, which needs instances
//! that outlive a call; and a pooled call costs a mutex pop instead of an instantiation.
//! Isolation between requests is still kept where it matters: an instance that faulted
//! (trap, deadline, memory limit) is discarded, never reused, and a fresh one is created
//! lazily on the next checkout. The `Arc<Revision>` a call holds keeps the whole pool alive
//! until the last in-flight call on it returns, which is how a swap never cuts a call off.
//! Every call counts on the revision's [`Meter`] (see `health.rs`), which outlives it until
//! its last counts are taken. Whoever drops the last `Arc` (often a call that was still
//! running at the swap) only hands the instances to the host's reaper (`teardown.rs`), whose
//! thread frees them.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::abi::Capabilities;
use crate::compiled::Compiled;
use crate::error::{CallError, Fault, GuestFailure};
use crate::health::Meter;
use crate::instance::{CallLimit, PluginInstance};
use crate::teardown::Reaper;

/// Identity of a revision: what a repeated `Load` is compared against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionId {
    /// Plugin slot name.
    pub plugin: String,
    /// Revision name given by the sidecar.
    pub revision: String,
    /// `sha256:<hex>` of the module.
    pub digest: String,
    /// Config bytes handed to `configure`.
    pub config: Vec<u8>,
}

struct Pool {
    idle: Vec<PluginInstance>,
    /// Instances that exist (idle + checked out).
    live: usize,
    /// Checkouts waiting for an instance to come back. A return wakes one only when there
    /// is one: `Condvar::notify_one` enters the kernel even with no waiter, a system call
    /// on every request otherwise.
    waiting: usize,
}

/// A loaded revision and its instances.
pub(crate) struct Revision {
    pub(crate) id: RevisionId,
    pub(crate) caps: Capabilities,
    /// How its calls went; shared with the host's list of meters.
    pub(crate) meter: Arc<Meter>,
    module: Arc<Compiled>,
    target: usize,
    max_memory: usize,
    call_limit: CallLimit,
    checkout_timeout: Duration,
    pool: Mutex<Pool>,
    freed: Condvar,
    reaper: Arc<Reaper<Remains>>,
}

/// What a dropped revision leaves to the reaper: its instances, and the module they run
/// (the last reference to a module, once the host no longer keeps it, unmaps its code).
pub(crate) struct Remains {
    _instances: Vec<PluginInstance>,
    _module: Arc<Compiled>,
}

impl Drop for Revision {
    fn drop(&mut self) {
        let pool = self.pool.get_mut().unwrap_or_else(|p| p.into_inner());
        self.reaper.retire(Remains {
            _instances: std::mem::take(&mut pool.idle),
            _module: self.module.clone(),
        });
    }
}

/// An instance on loan; goes back to the pool on drop unless it faulted.
pub(crate) struct Checkout<'a> {
    rev: &'a Revision,
    inst: Option<PluginInstance>,
    faulted: bool,
    /// Taken from the idle pool at once: no wait, no instantiation.
    at_once: bool,
}

impl std::ops::Deref for Checkout<'_> {
    type Target = PluginInstance;
    fn deref(&self) -> &PluginInstance {
        self.inst.as_ref().expect("instance present until drop")
    }
}

impl Checkout<'_> {
    /// The instance faulted outside a call (say, in `save_state`): it is dropped, never
    /// lent again.
    pub(crate) fn discard(&mut self) {
        self.faulted = true;
    }
}

impl std::ops::DerefMut for Checkout<'_> {
    fn deref_mut(&mut self) -> &mut PluginInstance {
        self.inst.as_mut().expect("instance present until drop")
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        let mut pool = self.rev.lock();
        match self.inst.take() {
            Some(inst) if !self.faulted => pool.idle.push(inst),
            _ => pool.live -= 1,
        }
        // A checkout that starts waiting after this sees the change under the lock first.
        let wake = pool.waiting > 0;
        drop(pool);
        if wake {
            self.rev.freed.notify_one();
        }
    }
}

/// Settings a revision is built with.
pub(crate) struct RevisionLimits {
    pub instances: usize,
    pub max_memory: usize,
    pub call_limit: CallLimit,
    pub checkout_timeout: Duration,
}

impl Revision {
    /// Creates the revision with `limits.instances` configured instances of `module`;
    /// `reaper` frees them when the revision is dropped.
    pub(crate) fn new(
        id: RevisionId,
        module: Arc<Compiled>,
        limits: RevisionLimits,
        reaper: Arc<Reaper<Remains>>,
    ) -> Result<Self, InstanceError> {
        let rev = Revision {
            meter: Arc::new(Meter::new(&id.plugin, &id.revision)),
            id,
            caps: module.caps,
            module,
            target: limits.instances.max(1),
            max_memory: limits.max_memory,
            call_limit: limits.call_limit,
            checkout_timeout: limits.checkout_timeout,
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                live: 0,
                waiting: 0,
            }),
            freed: Condvar::new(),
            reaper,
        };
        let mut idle = Vec::with_capacity(rev.target);
        for _ in 0..rev.target {
            idle.push(rev.instantiate()?);
        }
        *rev.lock() = Pool {
            live: idle.len(),
            idle,
            waiting: 0,
        };
        Ok(rev)
    }

    fn lock(&self) -> MutexGuard<'_, Pool> {
        // A panic while holding this lock cannot leave `Pool` inconsistent (two plain
        // fields updated together), so a poisoned lock is safe to keep using.
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn instantiate(&self) -> Result<PluginInstance, InstanceError> {
        let mut inst = PluginInstance::new(
            &self.module.pre,
            self.caps,
            self.max_memory,
            self.call_limit,
        )
        .map_err(InstanceError::Instantiate)?;
        inst.configure(&self.id.config)
            .map_err(InstanceError::Configure)?;
        Ok(inst)
    }

    /// Borrows an instance, creating one if the pool lost some to faults.
    pub(crate) fn checkout(&self) -> Result<Checkout<'_>, CallError> {
        let deadline = Instant::now() + self.checkout_timeout;
        let mut pool = self.lock();
        let mut at_once = true;
        loop {
            if let Some(inst) = pool.idle.pop() {
                return Ok(Checkout {
                    rev: self,
                    inst: Some(inst),
                    faulted: false,
                    at_once,
                });
            }
            if pool.live < self.target {
                pool.live += 1;
                drop(pool);
                return match self.instantiate() {
                    Ok(inst) => Ok(Checkout {
                        rev: self,
                        inst: Some(inst),
                        faulted: false,
                        at_once: false,
                    }),
                    Err(e) => {
                        self.lock().live -= 1;
                        Err(CallError::Reinstantiate {
                            plugin: self.id.plugin.clone(),
                            revision: self.id.revision.clone(),
                            fault: e.into_fault(),
                        })
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(CallError::Busy {
                    plugin: self.id.plugin.clone(),
                    revision: self.id.revision.clone(),
                    waited_ms: self.checkout_timeout.as_millis(),
                });
            }
            at_once = false;
            pool.waiting += 1;
            pool = self
                .freed
                .wait_timeout(pool, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            pool.waiting -= 1;
        }
    }

    /// Runs `f` on every instance, waiting for each to be free (used for state hand-over).
    pub(crate) fn for_each_instance(
        &self,
        mut f: impl FnMut(&mut PluginInstance) -> Result<(), GuestFailure>,
    ) -> Result<(), GuestFailure> {
        // Only called before the revision is published, so every instance is idle.
        let mut pool = self.lock();
        for inst in pool.idle.iter_mut() {
            f(inst)?;
        }
        Ok(())
    }

    /// Handles one request on a pooled instance, and counts it: its latency includes the
    /// wait for a free instance.
    pub(crate) fn call(&self, input: &[u8]) -> Result<Vec<u8>, CallError> {
        let start = Instant::now();
        let result = self.call_uncounted(input, start);
        let error = result.as_ref().err().and_then(CallError::health_kind);
        self.meter.record(start.elapsed(), error);
        result
    }

    fn call_uncounted(&self, input: &[u8], start: Instant) -> Result<Vec<u8>, CallError> {
        let mut inst = self.checkout()?;
        // The deadline runs from when the guest gets the instance. Popped from the idle pool
        // at once (the usual case) that is `start`, a pop later: a clock read saved per call
        // (about 60 ns here). After a wait or an instantiation it is now.
        let armed_at = if inst.at_once { start } else { Instant::now() };
        match inst.handle(input, armed_at) {
            Ok(out) => Ok(out),
            Err(failure) => {
                // Its memory may be half-updated: never hand it to another request.
                inst.faulted = true;
                Err(CallError::Guest {
                    plugin: self.id.plugin.clone(),
                    revision: self.id.revision.clone(),
                    failure,
                })
            }
        }
    }
}

/// Why a fresh instance could not be made ready.
#[derive(Debug)]
pub(crate) enum InstanceError {
    Instantiate(Fault),
    Configure(GuestFailure),
}

impl InstanceError {
    fn into_fault(self) -> Fault {
        match self {
            InstanceError::Instantiate(f) => f,
            InstanceError::Configure(GuestFailure::Fault(f)) => f,
            InstanceError::Configure(other) => Fault::Other(format!("configure: {other}")),
        }
    }
}
