//! The plugin ABI: the exports a Hotload Wasm plugin provides and how values cross the
//! boundary. Kept to core Wasm types (i32/i64) so any language that targets
//! `wasm32-unknown-unknown` or `wasip1` can implement it without a PDK.
//!
//! | export | signature | required | meaning |
//! |---|---|---|---|
//! | `memory` | memory | yes | the linear memory the host reads and writes |
//! | `alloc` | `(len: i32) -> i32` | yes | returns a pointer to `len` writable bytes |
//! | `handle` | `(ptr: i32, len: i32) -> i64` | yes | handles one request; returns a packed `(ptr, len)` of the response |
//! | `configure` | `(ptr: i32, len: i32) -> i32` | no | receives the release's config bytes once per instance; `0` = accepted |
//! | `self_check` | `() -> i32` | no | run once before the swap; `0` = healthy, anything else = failure code |
//! | `save_state` | `() -> i64` | no | on the old revision: packed `(ptr, len)` of a state snapshot |
//! | `restore_state` | `(ptr: i32, len: i32) -> i32` | no | on the new revision: `0` = restored |
//!
//! State hand-over takes one snapshot, from one of the old revision's pooled instances, and
//! restores it into every new instance; the old revision serves until the swap, so what it
//! changes after the snapshot stays with it. State a plugin must not lose belongs outside
//! it (the app's store), not in instance memory. A trap in `save_state` fails the load and
//! drops that instance; the old revision keeps serving from the others.
//!
//! Imports: only `wasi_snapshot_preview1`, sandboxed (clocks and randomness; no files,
//! environment, arguments or sockets). A module exporting `_initialize` (a WASI reactor,
//! such as Go's `-buildmode=c-shared`) has it called once per instance before anything else.
//! A WASI sleep counts against the call's deadline like running code does: a call that
//! sleeps past it fails with the same timeout.
//!
//! A packed `(ptr, len)` is `(ptr << 32) | len` as an `i64`. The host never frees plugin
//! memory; a plugin may reuse its buffers on every `alloc` (a bump allocator that resets per
//! call is enough), because the host copies the response out before its next call.

/// WASI reactor initialiser, called once per instance when exported.
pub const INITIALIZE: &str = "_initialize";
/// Name of the exported linear memory.
pub const MEMORY: &str = "memory";
/// Export that hands out buffers for the host to write inputs into.
pub const ALLOC: &str = "alloc";
/// Export that handles one request.
pub const HANDLE: &str = "handle";
/// Optional export that receives the plugin config.
pub const CONFIGURE: &str = "configure";
/// Optional export run before the swap.
pub const SELF_CHECK: &str = "self_check";
/// Optional export that snapshots state on the outgoing revision.
pub const SAVE_STATE: &str = "save_state";
/// Optional export that takes the snapshot on the incoming revision.
pub const RESTORE_STATE: &str = "restore_state";

/// Packs a pointer and a length the way plugins return them.
pub fn pack(ptr: u32, len: u32) -> i64 {
    ((u64::from(ptr) << 32) | u64::from(len)) as i64
}

/// Splits a packed `(ptr, len)` returned by a plugin.
pub fn unpack(packed: i64) -> (u32, u32) {
    let bits = packed as u64;
    ((bits >> 32) as u32, (bits & 0xffff_ffff) as u32)
}

/// Checks that `[ptr, ptr + len)` lies inside a memory of `memory_len` bytes; the plugin is
/// untrusted, so a bad range must be an error, never a panic or an out-of-bounds read.
pub fn checked_range(ptr: u32, len: u32, memory_len: usize) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(ptr).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (end <= memory_len).then_some(start..end)
}

/// What an export is, reduced to what the ABI check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportKind {
    /// A linear memory.
    Memory,
    /// A function with its signature written like `(i32,i32)->i64`.
    Func(String),
    /// A table or global (ignored).
    Other,
}

/// Optional exports a module provides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Has `configure`.
    pub configure: bool,
    /// Has `self_check`.
    pub self_check: bool,
    /// Has `save_state`.
    pub save_state: bool,
    /// Has `restore_state`.
    pub restore_state: bool,
}

/// Checks a module's exports against the ABI table above; the error names the export and
/// what was expected, so a plugin author can fix it from the `Failed` reason alone.
pub fn check_exports(exports: &[(String, ExportKind)]) -> Result<Capabilities, String> {
    let find = |name: &str| exports.iter().find(|(n, _)| n == name).map(|(_, k)| k);
    match find(MEMORY) {
        Some(ExportKind::Memory) => {}
        Some(other) => {
            return Err(format!(
                "export `{MEMORY}` must be a memory, found {other:?}"
            ));
        }
        None => return Err(format!("missing export `{MEMORY}` (memory)")),
    }
    let func = |name: &str, sig: &str, required: bool| -> Result<bool, String> {
        match find(name) {
            Some(ExportKind::Func(s)) if s == sig => Ok(true),
            Some(ExportKind::Func(s)) => {
                Err(format!("export `{name}` has signature {s}, want {sig}"))
            }
            Some(other) => Err(format!(
                "export `{name}` must be a function {sig}, found {other:?}"
            )),
            None if required => Err(format!("missing export `{name}` {sig}")),
            None => Ok(false),
        }
    };
    func(ALLOC, "(i32)->i32", true)?;
    func(HANDLE, "(i32,i32)->i64", true)?;
    Ok(Capabilities {
        configure: func(CONFIGURE, "(i32,i32)->i32", false)?,
        self_check: func(SELF_CHECK, "()->i32", false)?,
        save_state: func(SAVE_STATE, "()->i64", false)?,
        restore_state: func(RESTORE_STATE, "(i32,i32)->i32", false)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips_including_high_bit_pointers() {
        for (p, l) in [(0, 0), (1024, 5), (u32::MAX, u32::MAX), (0x8000_0000, 1)] {
            assert_eq!(unpack(pack(p, l)), (p, l));
        }
    }

    fn minimal() -> Vec<(String, ExportKind)> {
        vec![
            (MEMORY.into(), ExportKind::Memory),
            (ALLOC.into(), ExportKind::Func("(i32)->i32".into())),
            (HANDLE.into(), ExportKind::Func("(i32,i32)->i64".into())),
        ]
    }

    #[test]
    fn check_exports_accepts_minimal_and_reports_optional_exports() {
        assert_eq!(check_exports(&minimal()), Ok(Capabilities::default()));
        let mut e = minimal();
        e.push((SELF_CHECK.into(), ExportKind::Func("()->i32".into())));
        e.push((
            RESTORE_STATE.into(),
            ExportKind::Func("(i32,i32)->i32".into()),
        ));
        let caps = check_exports(&e).expect("valid");
        assert!(caps.self_check && caps.restore_state && !caps.save_state && !caps.configure);
    }

    #[test]
    fn check_exports_names_the_offending_export() {
        let mut e = minimal();
        e.retain(|(n, _)| n != HANDLE);
        assert_eq!(
            check_exports(&e),
            Err("missing export `handle` (i32,i32)->i64".into())
        );
        let mut e = minimal();
        e.push((SELF_CHECK.into(), ExportKind::Func("()->i64".into())));
        assert_eq!(
            check_exports(&e),
            Err("export `self_check` has signature ()->i64, want ()->i32".into())
        );
        let e: Vec<_> = minimal().into_iter().filter(|(n, _)| n != MEMORY).collect();
        assert!(check_exports(&e).is_err_and(|m| m.contains("memory")));
    }

    #[test]
    fn checked_range_rejects_out_of_bounds_and_overflow() {
        assert_eq!(checked_range(10, 5, 15), Some(10..15));
        assert_eq!(checked_range(10, 6, 15), None);
        assert_eq!(checked_range(u32::MAX, u32::MAX, 1 << 20), None);
        assert_eq!(checked_range(0, 0, 0), Some(0..0));
    }
}
