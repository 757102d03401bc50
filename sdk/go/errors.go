package hotload

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tetratelabs/wazero/sys"
)

// The errors of the host. Each names the plugin, the revision and the cause, in the same words
// as hotload-host (plugin-host/src/error.rs), because the reason of a refused load travels to
// the operator's status and events: `plugin auth revision r2: self-check failed: returned
// status 7`. Kinds are the shared vocabulary of sdk/conformance/cases.json.

// FailureKind says how a guest export failed.
type FailureKind string

// The ways a guest export can fail.
const (
	// FailStatus: it returned a non-zero status.
	FailStatus FailureKind = "status"
	// FailTimeout: it ran past the call deadline and was interrupted.
	FailTimeout FailureKind = "timeout"
	// FailCanceled: the caller's context was canceled while it ran.
	FailCanceled FailureKind = "canceled"
	// FailMemoryLimit: it asked for more memory than the host allows.
	FailMemoryLimit FailureKind = "memory_limit"
	// FailTrap: it trapped (unreachable, out-of-bounds access, …).
	FailTrap FailureKind = "trap"
	// FailBadRange: it returned (or handed out) a (ptr, len) outside its memory.
	FailBadRange FailureKind = "bad_range"
	// FailOther: anything else the runtime reported.
	FailOther FailureKind = "other"
)

// Failure is how a guest export (handle, self_check, …) did not complete.
type Failure struct {
	// Kind classifies the failure.
	Kind FailureKind
	// Status is the non-zero status returned (FailStatus).
	Status int32
	// Requested and Limit are the memory size asked for and the ceiling, in bytes
	// (FailMemoryLimit).
	Requested, Limit uint64
	// Ptr and Len are the range the guest gave (FailBadRange).
	Ptr, Len uint32
	// Detail is the trap message or the runtime's words (FailTrap, FailOther).
	Detail string
}

func (f Failure) String() string {
	switch f.Kind {
	case FailStatus:
		return fmt.Sprintf("returned status %d", f.Status)
	case FailTimeout:
		return "deadline exceeded (interrupted)"
	case FailCanceled:
		return "canceled by the caller (interrupted)"
	case FailMemoryLimit:
		return fmt.Sprintf("memory limit exceeded: asked for %d bytes, limit is %d bytes", f.Requested, f.Limit)
	case FailTrap:
		return "trap: " + f.Detail
	case FailBadRange:
		return fmt.Sprintf("returned range ptr=%d len=%d outside its memory", f.Ptr, f.Len)
	default:
		return f.Detail
	}
}

// memoryLimitError is raised (as a panic the runtime recovers) by the memory allocator when
// a guest grows past the limit; classify finds it again.
type memoryLimitError struct{ requested, limit uint64 }

func (e *memoryLimitError) Error() string {
	return fmt.Sprintf("memory limit exceeded: asked for %d bytes, limit is %d bytes", e.requested, e.limit)
}

// sleepInterrupted is raised (as a panic) by an instance's WASI sleep when the call's
// deadline or the caller's context ends it: a sleep is host code, where the runtime's own
// interruption checks do not reach.
type sleepInterrupted struct{ canceled bool }

func (e *sleepInterrupted) Error() string {
	if e.canceled {
		return "sleep interrupted: canceled"
	}
	return "sleep interrupted: deadline exceeded"
}

// classify turns a wazero error into a Failure. Pure: looks only at the error chain.
func classify(err error) Failure {
	var mem *memoryLimitError
	if errors.As(err, &mem) {
		return Failure{Kind: FailMemoryLimit, Requested: mem.requested, Limit: mem.limit}
	}
	var sleep *sleepInterrupted
	if errors.As(err, &sleep) {
		if sleep.canceled {
			return Failure{Kind: FailCanceled}
		}
		return Failure{Kind: FailTimeout}
	}
	var exit *sys.ExitError
	if errors.As(err, &exit) {
		switch exit.ExitCode() {
		case sys.ExitCodeDeadlineExceeded:
			return Failure{Kind: FailTimeout}
		case sys.ExitCodeContextCanceled:
			return Failure{Kind: FailCanceled}
		default:
			return Failure{Kind: FailOther, Detail: fmt.Sprintf("plugin exited with code %d", exit.ExitCode())}
		}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return Failure{Kind: FailTimeout}
	}
	if errors.Is(err, context.Canceled) {
		return Failure{Kind: FailCanceled}
	}
	msg := firstLine(err.Error())
	// wazero reports traps as "wasm error: <trap>", sometimes after a prefix such as
	// "start function[0] failed: ".
	if _, trap, ok := strings.Cut(msg, "wasm error: "); ok {
		return Failure{Kind: FailTrap, Detail: trap}
	}
	return Failure{Kind: FailOther, Detail: msg}
}

// firstLine drops the stack trace wazero appends to its errors.
func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// LoadErrorKind says why a load was refused.
type LoadErrorKind string

// The reasons a load is refused.
const (
	// LoadBadDigest: the digest is not sha256:<64 lowercase hex>.
	LoadBadDigest LoadErrorKind = "bad_digest"
	// LoadDigestMismatch: the bytes do not hash to the digest.
	LoadDigestMismatch LoadErrorKind = "digest_mismatch"
	// LoadRead: the artifact file could not be read.
	LoadRead LoadErrorKind = "read"
	// LoadInvalidWasm: the bytes are not a valid module for this host.
	LoadInvalidWasm LoadErrorKind = "invalid_wasm"
	// LoadABI: the module does not follow the plugin ABI (exports, imports).
	LoadABI LoadErrorKind = "abi"
	// LoadInstantiate: instantiation failed (start function, _initialize, …).
	LoadInstantiate LoadErrorKind = "instantiate"
	// LoadConfigure: the configure export failed or refused the config.
	LoadConfigure LoadErrorKind = "configure"
	// LoadSelfCheck: the self_check export failed.
	LoadSelfCheck LoadErrorKind = "self_check"
	// LoadSaveState: the old revision's save_state failed.
	LoadSaveState LoadErrorKind = "save_state"
	// LoadRestoreState: the new revision's restore_state failed.
	LoadRestoreState LoadErrorKind = "restore_state"
	// LoadTooManyPlugins: the host holds Config.MaxPlugins plugins already.
	LoadTooManyPlugins LoadErrorKind = "too_many_plugins"
)

// phase is how a guest-phase kind reads in a reason.
var phase = map[LoadErrorKind]string{
	LoadConfigure:    "configure",
	LoadSelfCheck:    "self-check",
	LoadSaveState:    "save-state",
	LoadRestoreState: "restore-state",
}

// LoadError is a load that did not happen; the previous revision (if any) keeps serving.
type LoadError struct {
	// Kind says why.
	Kind LoadErrorKind
	// Plugin and Revision name what was refused.
	Plugin, Revision string
	// Failure is how the guest failed (guest phases and LoadInstantiate).
	Failure *Failure
	// Reason is the cause in words (LoadInvalidWasm, LoadABI).
	Reason string
	// Expected and Actual are the digests (LoadDigestMismatch); Expected is also the
	// malformed digest (LoadBadDigest).
	Expected, Actual string
	// Path is the file that could not be read (LoadRead).
	Path string
	// Max is the configured plugin limit (LoadTooManyPlugins).
	Max int
	// Err is the underlying error, if any.
	Err error
}

func (e *LoadError) Error() string {
	who := fmt.Sprintf("plugin %s revision %s", e.Plugin, e.Revision)
	switch e.Kind {
	case LoadBadDigest:
		return fmt.Sprintf("%s: malformed digest %q: want sha256:<64 lowercase hex>", who, e.Expected)
	case LoadDigestMismatch:
		return fmt.Sprintf("%s: digest mismatch: expected %s, got %s", who, e.Expected, e.Actual)
	case LoadRead:
		return fmt.Sprintf("%s: cannot read %s: %v", who, e.Path, e.Err)
	case LoadInvalidWasm:
		return fmt.Sprintf("%s: invalid wasm: %s", who, e.Reason)
	case LoadABI:
		return fmt.Sprintf("%s: ABI violation: %s", who, e.Reason)
	case LoadInstantiate:
		return fmt.Sprintf("%s: instantiation failed: %s", who, e.failure())
	case LoadTooManyPlugins:
		return fmt.Sprintf("plugin %s: cannot load more than %d plugins", e.Plugin, e.Max)
	default:
		return fmt.Sprintf("%s: %s failed: %s", who, phase[e.Kind], e.failure())
	}
}

func (e *LoadError) failure() string {
	if e.Failure == nil {
		return "unknown failure"
	}
	return e.Failure.String()
}

// Unwrap returns the underlying error, if any.
func (e *LoadError) Unwrap() error { return e.Err }

// CallErrorKind says why a call was not served.
type CallErrorKind string

// The reasons a call fails.
const (
	// CallNotLoaded: no revision of the plugin is loaded.
	CallNotLoaded CallErrorKind = "not_loaded"
	// CallBusy: every instance stayed busy for Config.CheckoutTimeout.
	CallBusy CallErrorKind = "busy"
	// CallHandle: the guest failed on this request; its instance is replaced.
	CallHandle CallErrorKind = "handle"
	// CallReinstantiate: a replacement instance could not be created.
	CallReinstantiate CallErrorKind = "reinstantiate"
)

// ErrNotLoaded matches (errors.Is) a call to a plugin with no serving revision.
var ErrNotLoaded = errors.New("plugin not loaded")

// ErrPinReleased is returned by a call through a Pinned after its Release.
var ErrPinReleased = errors.New("hotload: call through a released pin")

// CallError is a request the plugin could not serve.
type CallError struct {
	// Kind says why.
	Kind CallErrorKind
	// Plugin and Revision name what was called (Revision is empty for CallNotLoaded).
	Plugin, Revision string
	// Failure is how the guest failed (CallHandle, CallReinstantiate).
	Failure *Failure
	// Waited is how long the call waited for an instance (CallBusy).
	Waited time.Duration
}

func (e *CallError) Error() string {
	who := fmt.Sprintf("plugin %s revision %s", e.Plugin, e.Revision)
	switch e.Kind {
	case CallNotLoaded:
		return fmt.Sprintf("plugin %s: not loaded", e.Plugin)
	case CallBusy:
		return fmt.Sprintf("%s: no free instance within %d ms", who, e.Waited.Milliseconds())
	case CallReinstantiate:
		return fmt.Sprintf("%s: re-instantiation failed: %s", who, e.failure())
	default:
		return fmt.Sprintf("%s: handle failed: %s", who, e.failure())
	}
}

func (e *CallError) failure() string {
	if e.Failure == nil {
		return "unknown failure"
	}
	return e.Failure.String()
}

// Is makes errors.Is(err, ErrNotLoaded) true for CallNotLoaded.
func (e *CallError) Is(target error) bool {
	return target == ErrNotLoaded && e.Kind == CallNotLoaded
}
