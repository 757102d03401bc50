//! The sandbox's `wasi_snapshot_preview1.poll_oneoff`: WASI's only way to sleep, bounded by
//! the deadline of the guest call it happens in.
//!
//! Epoch interruption checks the deadline at guest function entries and loop heads, never in
//! host code, so wasmtime-wasi's `poll_oneoff` would let `time.Sleep(10 * time.Second)` (Go),
//! `thread::sleep` (Rust) or `nanosleep` (wasi-libc) hold the calling thread, and the pooled
//! instance, long past the call's limit. This replacement sleeps at most until the deadline
//! and then traps with [`Trap::Interrupt`], the trap a CPU-bound loop gets at that point, so
//! both fail `Fault::Timeout` and the instance is discarded like any faulted one.
//!
//! ```text
//!  guest ── poll_oneoff(subs) ── parse ── plan_poll(subs, time left) ──┬─ Ready     → events
//!                                                                     ├─ Sleep(d)  → sleep d → events
//!                                                                     └─ Timeout(d)→ sleep d → trap Interrupt
//! ```
//! Why a replacement rather than running calls on async wasmtime so a sleep can be
//! cancelled: the host is synchronous end to end (pool checkout, state hand-over, the app's
//! threads); async would need a runtime and fibers on every call to fix one host function.
//! The replacement is exact for this sandbox, because the only descriptors it has are stdin
//! (closed: always readable, at end of file) and stdout/stderr (discarded: always writable),
//! so only clock subscriptions can ever block; every other WASI function it has returns
//! at once. (One liberty: descriptors 0–2 count as open even after the guest closed or
//! renumbered them, where wasmtime-wasi would answer `EBADF`; nothing blocks either way.)

use std::time::{Duration, Instant, SystemTime};

use wasmtime::{Caller, Extern, Linker, Trap};

use crate::abi;
use crate::instance::StoreState;

/// WASI errno values the replacement returns.
mod errno {
    pub const SUCCESS: i32 = 0;
    pub const BADF: i32 = 8;
    pub const FAULT: i32 = 21;
    pub const INVAL: i32 = 28;
}

/// Bytes of a preview1 `subscription` and of an `event`.
const SUBSCRIPTION_SIZE: usize = 48;
const EVENT_SIZE: usize = 32;

/// What one subscription waits for, with absolute clock times already made relative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// A clock that fires this long from now.
    Clock(Duration),
    /// Stdin readable (always, it is closed).
    FdRead,
    /// Stdout or stderr writable (always, they are discarded).
    FdWrite,
}

/// One parsed subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub userdata: u64,
    pub wait: Wait,
}

/// The guest's two clocks at one instant, in nanoseconds, as `clock_time_get` reports them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClockReadings {
    pub realtime: u64,
    pub monotonic: u64,
}

/// Decodes one 48-byte subscription; errors are the errno `poll_oneoff` returns. Pure.
pub(crate) fn parse_subscription(raw: &[u8], now: ClockReadings) -> Result<Subscription, i32> {
    let u64_at = |at: usize| u64::from_le_bytes(raw[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_le_bytes(raw[at..at + 4].try_into().expect("4 bytes"));
    let userdata = u64_at(0);
    let wait = match raw[8] {
        0 => {
            let timeout = u64_at(24);
            let absolute = u16::from_le_bytes([raw[40], raw[41]]) & 1 == 1;
            let clock_now = match u32_at(16) {
                0 => now.realtime,
                1 => now.monotonic,
                // The CPU-time clocks cannot be waited on (wasmtime-wasi says the same).
                _ => return Err(errno::INVAL),
            };
            let nanos = if absolute {
                timeout.saturating_sub(clock_now)
            } else {
                timeout
            };
            Wait::Clock(Duration::from_nanos(nanos))
        }
        1 if u32_at(16) == 0 => Wait::FdRead,
        2 if matches!(u32_at(16), 1 | 2) => Wait::FdWrite,
        1 | 2 => return Err(errno::BADF),
        _ => return Err(errno::INVAL),
    };
    Ok(Subscription { userdata, wait })
}

/// What `poll_oneoff` does with its subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PollPlan {
    /// Report what is ready now, without sleeping.
    Ready,
    /// Sleep this long, then report the clocks that fired.
    Sleep(Duration),
    /// The first clock fires after the call's deadline: sleep until the deadline, then trap.
    Timeout(Duration),
}

/// Decides how long to block given the time the call has left. Pure.
pub(crate) fn plan_poll(subs: &[Subscription], left: Duration) -> PollPlan {
    if subs.iter().any(|s| !matches!(s.wait, Wait::Clock(_))) {
        // A descriptor is always ready in this sandbox.
        return PollPlan::Ready;
    }
    let first_clock = subs
        .iter()
        .filter_map(|s| match s.wait {
            Wait::Clock(d) => Some(d),
            Wait::FdRead | Wait::FdWrite => None,
        })
        .min();
    match first_clock {
        None => PollPlan::Ready,
        Some(d) if d.is_zero() => PollPlan::Ready,
        Some(d) if d > left => PollPlan::Timeout(left),
        Some(d) => PollPlan::Sleep(d),
    }
}

/// The 32-byte events for the subscriptions ready after sleeping `slept`, in subscription
/// order (as wasmtime-wasi reports them). Pure.
pub(crate) fn ready_events(subs: &[Subscription], slept: Duration) -> Vec<[u8; EVENT_SIZE]> {
    subs.iter()
        .filter_map(|s| {
            let (kind, nbytes) = match s.wait {
                Wait::Clock(d) if d <= slept => (0u8, 0u64),
                Wait::Clock(_) => return None,
                Wait::FdRead => (1, 1),
                Wait::FdWrite => (2, 1),
            };
            let mut event = [0u8; EVENT_SIZE];
            event[0..8].copy_from_slice(&s.userdata.to_le_bytes());
            // errno (u16) at 8 stays SUCCESS; flags (u16) at 24 stay empty.
            event[10] = kind;
            event[16..24].copy_from_slice(&nbytes.to_le_bytes());
            Some(event)
        })
        .collect()
}

/// Shadows wasmtime-wasi's `poll_oneoff` in `linker` (which must already hold WASI).
pub(crate) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = linker
        .func_wrap(
            "wasi_snapshot_preview1",
            "poll_oneoff",
            |mut caller: Caller<'_, StoreState>, subs: i32, events: i32, n: i32, nevents: i32| {
                poll_oneoff(
                    &mut caller,
                    subs as u32,
                    events as u32,
                    n as u32,
                    nevents as u32,
                )
            },
        )
        .map(|_| ());
    linker.allow_shadowing(false);
    added
}

fn poll_oneoff(
    caller: &mut Caller<'_, StoreState>,
    subs_ptr: u32,
    events_ptr: u32,
    n: u32,
    nevents_ptr: u32,
) -> wasmtime::Result<i32> {
    if n == 0 {
        // Sleeping forever is not a thing preview1 supports.
        return Ok(errno::INVAL);
    }
    let Some(Extern::Memory(memory)) = caller.get_export(abi::MEMORY) else {
        return Err(wasmtime::Error::msg(
            "poll_oneoff: module exports no memory",
        ));
    };
    let now = ClockReadings {
        realtime: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        monotonic: caller.data().monotonic_now(),
    };
    let subs = {
        let data = memory.data(&caller);
        let Some(range) = byte_range(subs_ptr, n, SUBSCRIPTION_SIZE, data.len()) else {
            return Ok(errno::FAULT);
        };
        let parsed: Result<Vec<_>, i32> = data[range]
            .chunks_exact(SUBSCRIPTION_SIZE)
            .map(|raw| parse_subscription(raw, now))
            .collect();
        match parsed {
            Ok(subs) => subs,
            Err(errno) => return Ok(errno),
        }
    };
    let left = caller
        .data()
        .deadline()
        .saturating_duration_since(Instant::now());
    let slept = match plan_poll(&subs, left) {
        PollPlan::Ready => Duration::ZERO,
        PollPlan::Sleep(d) => {
            std::thread::sleep(d);
            d
        }
        PollPlan::Timeout(d) => {
            std::thread::sleep(d);
            return Err(Trap::Interrupt.into());
        }
    };
    let ready = ready_events(&subs, slept);
    let data = memory.data_mut(caller);
    let count = u32::try_from(ready.len()).expect("at most n events");
    let (Some(events), Some(nevents)) = (
        byte_range(events_ptr, count, EVENT_SIZE, data.len()),
        abi::checked_range(nevents_ptr, 4, data.len()),
    ) else {
        return Ok(errno::FAULT);
    };
    data[events].copy_from_slice(&ready.concat());
    data[nevents].copy_from_slice(&count.to_le_bytes());
    Ok(errno::SUCCESS)
}

/// The range of `count` records of `size` bytes at `ptr`, if inside a memory of `memory_len`.
fn byte_range(
    ptr: u32,
    count: u32,
    size: usize,
    memory_len: usize,
) -> Option<std::ops::Range<usize>> {
    let len = u32::try_from(usize::try_from(count).ok()?.checked_mul(size)?).ok()?;
    abi::checked_range(ptr, len, memory_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: ClockReadings = ClockReadings {
        realtime: 1_700_000_000_000_000_000,
        monotonic: 5_000_000_000,
    };

    fn raw_clock(userdata: u64, clock: u32, timeout: u64, flags: u16) -> [u8; 48] {
        let mut raw = [0u8; 48];
        raw[0..8].copy_from_slice(&userdata.to_le_bytes());
        raw[16..20].copy_from_slice(&clock.to_le_bytes());
        raw[24..32].copy_from_slice(&timeout.to_le_bytes());
        raw[40..42].copy_from_slice(&flags.to_le_bytes());
        raw
    }

    fn raw_fd(tag: u8, fd: u32) -> [u8; 48] {
        let mut raw = [0u8; 48];
        raw[8] = tag;
        raw[16..20].copy_from_slice(&fd.to_le_bytes());
        raw
    }

    fn clock(userdata: u64, ms: u64) -> Subscription {
        Subscription {
            userdata,
            wait: Wait::Clock(Duration::from_millis(ms)),
        }
    }

    #[test]
    fn relative_and_absolute_clocks_become_time_from_now() {
        let ten_s = 10_000_000_000;
        let rel = parse_subscription(&raw_clock(7, 1, ten_s, 0), NOW).expect("valid");
        assert_eq!(rel, clock(7, 10_000));
        let abs_mono = raw_clock(7, 1, NOW.monotonic + ten_s, 1);
        assert_eq!(parse_subscription(&abs_mono, NOW), Ok(clock(7, 10_000)));
        let abs_real = raw_clock(7, 0, NOW.realtime + ten_s, 1);
        assert_eq!(parse_subscription(&abs_real, NOW), Ok(clock(7, 10_000)));
        let past = raw_clock(7, 1, 1, 1);
        assert_eq!(parse_subscription(&past, NOW), Ok(clock(7, 0)));
    }

    #[test]
    fn cpu_clocks_unknown_tags_and_foreign_descriptors_are_refused() {
        assert_eq!(
            parse_subscription(&raw_clock(1, 2, 5, 0), NOW),
            Err(errno::INVAL)
        );
        let mut raw = raw_fd(3, 0);
        assert_eq!(parse_subscription(&raw, NOW), Err(errno::INVAL));
        raw = raw_fd(1, 1);
        assert_eq!(parse_subscription(&raw, NOW), Err(errno::BADF));
        raw = raw_fd(2, 3);
        assert_eq!(parse_subscription(&raw, NOW), Err(errno::BADF));
        assert_eq!(
            parse_subscription(&raw_fd(1, 0), NOW).map(|s| s.wait),
            Ok(Wait::FdRead)
        );
        assert_eq!(
            parse_subscription(&raw_fd(2, 2), NOW).map(|s| s.wait),
            Ok(Wait::FdWrite)
        );
    }

    #[test]
    fn a_sleep_past_the_deadline_is_cut_at_the_deadline() {
        let left = Duration::from_millis(200);
        assert_eq!(
            plan_poll(&[clock(1, 10_000)], left),
            PollPlan::Timeout(left)
        );
        assert_eq!(
            plan_poll(&[clock(1, 10_000), clock(2, 20)], left),
            PollPlan::Sleep(Duration::from_millis(20))
        );
        assert_eq!(
            plan_poll(&[clock(1, 10)], Duration::ZERO),
            PollPlan::Timeout(Duration::ZERO)
        );
    }

    #[test]
    fn ready_descriptors_and_expired_clocks_do_not_sleep() {
        let fd = Subscription {
            userdata: 3,
            wait: Wait::FdRead,
        };
        let left = Duration::from_millis(200);
        assert_eq!(plan_poll(&[clock(1, 10_000), fd], left), PollPlan::Ready);
        assert_eq!(plan_poll(&[clock(1, 0)], left), PollPlan::Ready);
        let events = ready_events(&[clock(1, 10_000), fd, clock(2, 0)], Duration::ZERO);
        let userdata: Vec<_> = events
            .iter()
            .map(|e| (u64::from_le_bytes(e[0..8].try_into().expect("8")), e[10]))
            .collect();
        assert_eq!(userdata, [(3, 1), (2, 0)]);
    }

    #[test]
    fn records_outside_memory_or_overflowing_are_rejected() {
        assert_eq!(byte_range(0, 2, 48, 96), Some(0..96));
        assert_eq!(byte_range(1, 2, 48, 96), None);
        assert_eq!(byte_range(0, u32::MAX, 48, 1 << 30), None);
    }
}
