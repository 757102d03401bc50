package hotload

import "fmt"

// The plugin ABI, the same as hotload-host's (plugin-host/src/abi.rs): the exports a Hotload
// Wasm plugin provides and how values cross the boundary. Only core Wasm types (i32/i64), so
// any language that targets wasm32 (or wasip1) implements it without a PDK.
//
//	export         signature             required  meaning
//	memory         memory                yes       the linear memory the host reads and writes
//	alloc          (len i32) -> i32      yes       a pointer to len writable bytes
//	handle         (ptr, len i32) -> i64 yes       one request; returns a packed (ptr, len) response
//	configure      (ptr, len i32) -> i32 no        the release's config, once per instance; 0 = accepted
//	self_check     () -> i32             no        run once before the swap; 0 = healthy
//	save_state     () -> i64             no        on the old revision: packed (ptr, len) snapshot
//	restore_state  (ptr, len i32) -> i32 no        on the new revision: 0 = restored
//
// A packed (ptr, len) is (ptr << 32) | len as an i64. The host never frees plugin memory and
// copies every response out before its next call. Imports: only wasi_snapshot_preview1,
// sandboxed. A module exporting _initialize (a WASI reactor, such as Go's
// -buildmode=c-shared) has it called once per instance before anything else.
const (
	exportInitialize   = "_initialize"
	exportMemory       = "memory"
	exportAlloc        = "alloc"
	exportHandle       = "handle"
	exportConfigure    = "configure"
	exportSelfCheck    = "self_check"
	exportSaveState    = "save_state"
	exportRestoreState = "restore_state"
	wasiModule         = "wasi_snapshot_preview1"
)

// Pack packs a pointer and a length the way plugins return them.
func Pack(ptr, length uint32) int64 {
	return int64(uint64(ptr)<<32 | uint64(length))
}

// Unpack splits a packed (ptr, len) returned by a plugin.
func Unpack(packed int64) (ptr, length uint32) {
	bits := uint64(packed)
	return uint32(bits >> 32), uint32(bits)
}

// checkedRange reports whether [ptr, ptr+len) lies inside a memory of memLen bytes; the
// plugin is untrusted, so a bad range is an error, never an out-of-bounds read.
func checkedRange(ptr, length uint32, memLen uint64) bool {
	return uint64(ptr)+uint64(length) <= memLen
}

// exportKind is what an export is, reduced to what the ABI check needs.
type exportKind struct {
	memory bool
	// sig is a function's signature written like "(i32,i32)->i64"; empty for non-functions.
	sig string
}

func (k exportKind) String() string {
	switch {
	case k.memory:
		return "Memory"
	case k.sig != "":
		return fmt.Sprintf("Func(%q)", k.sig)
	default:
		return "Other"
	}
}

// capabilities are the optional exports a module provides.
type capabilities struct {
	configure, selfCheck, saveState, restoreState bool
}

// checkExports checks a module's exports against the ABI; the error names the export and what
// was expected, in the words hotload-host uses, so a plugin author can fix it from the
// reason alone. Pure.
func checkExports(exports map[string]exportKind) (capabilities, error) {
	mem, ok := exports[exportMemory]
	switch {
	case !ok:
		return capabilities{}, fmt.Errorf("missing export `%s` (memory)", exportMemory)
	case !mem.memory:
		return capabilities{}, fmt.Errorf("export `%s` must be a memory, found %s", exportMemory, mem)
	}
	fn := func(name, sig string, required bool) (bool, error) {
		k, ok := exports[name]
		switch {
		case !ok && required:
			return false, fmt.Errorf("missing export `%s` %s", name, sig)
		case !ok:
			return false, nil
		case k.sig == sig:
			return true, nil
		case k.sig != "":
			return false, fmt.Errorf("export `%s` has signature %s, want %s", name, k.sig, sig)
		default:
			return false, fmt.Errorf("export `%s` must be a function %s, found %s", name, sig, k)
		}
	}
	if _, err := fn(exportAlloc, "(i32)->i32", true); err != nil {
		return capabilities{}, err
	}
	if _, err := fn(exportHandle, "(i32,i32)->i64", true); err != nil {
		return capabilities{}, err
	}
	var caps capabilities
	var err error
	if caps.configure, err = fn(exportConfigure, "(i32,i32)->i32", false); err != nil {
		return capabilities{}, err
	}
	if caps.selfCheck, err = fn(exportSelfCheck, "()->i32", false); err != nil {
		return capabilities{}, err
	}
	if caps.saveState, err = fn(exportSaveState, "()->i64", false); err != nil {
		return capabilities{}, err
	}
	if caps.restoreState, err = fn(exportRestoreState, "(i32,i32)->i32", false); err != nil {
		return capabilities{}, err
	}
	return caps, nil
}
