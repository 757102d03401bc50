package hotload

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
)

// instance is one live instance of a revision: its module, memory and exports, and the
// byte-level calls that move requests, config and state across the ABI under a deadline.
// An instance serves one call at a time (the revision's pool lends it out).
type instance struct {
	mod  api.Module
	mem  api.Memory
	caps capabilities

	alloc, handle api.Function
	// The optional exports, bound when first called (each binding allocates wazero's call
	// stack for it): most instances never save state, and a revision with nothing to hand
	// over never restores any.
	configure, selfCheck, saveState, restoreState api.Function
	// stack is reused by every CallWithStack: two slots fit every ABI signature.
	stack [2]uint64

	// op is the context of the guest operation under way (op.go), also read by nanosleep
	// (which runs on the same goroutine, inside a guest call).
	op *opContext
}

// newInstance instantiates the revision's module, runs _initialize when exported, and
// binds the exports; the start function and _initialize run under the call deadline.
func newInstance(ctx context.Context, rt wazero.Runtime, compiled wazero.CompiledModule, base wazero.ModuleConfig, caps capabilities, maxMemory uint64, memories *memoryPool, timeout time.Duration) (inst *instance, failure *Failure) {
	inst = &instance{caps: caps, op: newOpContext(timeout)}
	ctx = inst.begin(experimental.WithMemoryAllocator(ctx, limitedAllocator(maxMemory, memories)))
	defer inst.end()
	defer func() {
		// The allocator panics past the limit; the runtime recovers that inside guest calls,
		// but not everywhere during instantiation.
		if r := recover(); r != nil {
			err, ok := r.(error)
			if !ok {
				err = fmt.Errorf("%v", r)
			}
			f := classify(err)
			inst, failure = nil, &f
		}
	}()
	mod, err := rt.InstantiateModule(ctx, compiled, base.WithNanosleep(inst.nanosleep))
	if err != nil {
		f := classify(err)
		return nil, &f
	}
	inst.mod = mod
	fail := func(err error) (*instance, *Failure) {
		_ = mod.Close(context.Background())
		f := classify(err)
		return nil, &f
	}
	// WASI reactors (Go -buildmode=c-shared, wasi-libc) initialise their runtime here.
	if init := mod.ExportedFunction(exportInitialize); init != nil {
		if _, err := init.Call(ctx); err != nil {
			return fail(err)
		}
	}
	if inst.mem = mod.ExportedMemory(exportMemory); inst.mem == nil {
		return fail(errors.New("export `memory` vanished"))
	}
	inst.alloc = mod.ExportedFunction(exportAlloc)
	inst.handle = mod.ExportedFunction(exportHandle)
	if inst.alloc == nil || inst.handle == nil {
		return fail(errors.New("export `alloc` or `handle` vanished"))
	}
	return inst, nil
}

// optional returns the optional export name, binding it into *f on first use; nil when the
// module does not export it.
func (i *instance) optional(f *api.Function, present bool, name string) api.Function {
	if *f == nil && present {
		*f = i.mod.ExportedFunction(name)
	}
	return *f
}

// close frees the instance's module (and its memory).
func (i *instance) close() {
	_ = i.mod.Close(context.Background())
}

// begin starts one guest operation: everything until end runs under one deadline, as
// hotload-host arms one epoch deadline per operation.
func (i *instance) begin(ctx context.Context) context.Context {
	i.op.begin(ctx)
	return i.op
}

// end ends the operation begin started.
func (i *instance) end() {
	i.op.finish()
}

// nanosleep is the instance's WASI sleep: it never outlives the operation. A sleep past the
// deadline (or one the caller cancels) ends it with a panic the runtime turns into the
// call's error, so a sleeping plugin times out like a looping one.
func (i *instance) nanosleep(ns int64) {
	op := i.op
	d, cut := time.Duration(ns), false
	if deadline, ok := op.Deadline(); ok && time.Until(deadline) < d {
		d, cut = max(time.Until(deadline), 0), true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		if cut {
			panic(&sleepInterrupted{})
		}
	case <-op.Done():
		panic(&sleepInterrupted{canceled: errors.Is(op.Err(), context.Canceled)})
	}
}

// call runs f with params in i.stack and returns the first result.
func (i *instance) call(ctx context.Context, f api.Function, params ...uint64) (uint64, *Failure) {
	copy(i.stack[:], params)
	if err := f.CallWithStack(ctx, i.stack[:]); err != nil {
		failure := classify(err)
		return 0, &failure
	}
	return i.stack[0], nil
}

// write copies b into guest memory through alloc.
func (i *instance) write(ctx context.Context, b []byte) (ptr, n uint32, failure *Failure) {
	if uint64(len(b)) > math.MaxUint32 {
		return 0, 0, &Failure{Kind: FailBadRange, Ptr: 0, Len: math.MaxUint32}
	}
	n = uint32(len(b))
	p, failure := i.call(ctx, i.alloc, uint64(n))
	if failure != nil {
		return 0, 0, failure
	}
	ptr = uint32(p)
	if !checkedRange(ptr, n, uint64(i.mem.Size())) || !i.mem.Write(ptr, b) {
		return 0, 0, &Failure{Kind: FailBadRange, Ptr: ptr, Len: n}
	}
	return ptr, n, nil
}

// read copies a packed (ptr, len) out of guest memory.
func (i *instance) read(packed uint64) ([]byte, *Failure) {
	ptr, n := Unpack(int64(packed))
	if !checkedRange(ptr, n, uint64(i.mem.Size())) {
		return nil, &Failure{Kind: FailBadRange, Ptr: ptr, Len: n}
	}
	view, ok := i.mem.Read(ptr, n)
	if !ok {
		return nil, &Failure{Kind: FailBadRange, Ptr: ptr, Len: n}
	}
	return bytes.Clone(view), nil
}

func status(code uint64, failure *Failure) *Failure {
	if failure != nil {
		return failure
	}
	if s := int32(uint32(code)); s != 0 {
		return &Failure{Kind: FailStatus, Status: s}
	}
	return nil
}

// Handle handles one request.
func (i *instance) Handle(ctx context.Context, input []byte) ([]byte, *Failure) {
	ctx = i.begin(ctx)
	defer i.end()
	ptr, n, failure := i.write(ctx, input)
	if failure != nil {
		return nil, failure
	}
	packed, failure := i.call(ctx, i.handle, uint64(ptr), uint64(n))
	if failure != nil {
		return nil, failure
	}
	out, failure := i.read(packed)
	if out == nil && failure == nil {
		out = []byte{}
	}
	return out, failure
}

// Configure hands the config bytes over, if the plugin takes config.
func (i *instance) Configure(ctx context.Context, config []byte) *Failure {
	configure := i.optional(&i.configure, i.caps.configure, exportConfigure)
	if configure == nil {
		return nil
	}
	ctx = i.begin(ctx)
	defer i.end()
	ptr, n, failure := i.write(ctx, config)
	if failure != nil {
		return failure
	}
	return status(i.call(ctx, configure, uint64(ptr), uint64(n)))
}

// SelfCheck runs the self-check, if exported.
func (i *instance) SelfCheck(ctx context.Context) *Failure {
	selfCheck := i.optional(&i.selfCheck, i.caps.selfCheck, exportSelfCheck)
	if selfCheck == nil {
		return nil
	}
	ctx = i.begin(ctx)
	defer i.end()
	return status(i.call(ctx, selfCheck))
}

// SaveState takes a state snapshot; ok is false when the plugin exports no save_state.
func (i *instance) SaveState(ctx context.Context) (snapshot []byte, ok bool, failure *Failure) {
	saveState := i.optional(&i.saveState, i.caps.saveState, exportSaveState)
	if saveState == nil {
		return nil, false, nil
	}
	ctx = i.begin(ctx)
	defer i.end()
	packed, failure := i.call(ctx, saveState)
	if failure != nil {
		return nil, true, failure
	}
	snapshot, failure = i.read(packed)
	return snapshot, true, failure
}

// RestoreState hands a snapshot over; a plugin without restore_state ignores it.
func (i *instance) RestoreState(ctx context.Context, snapshot []byte) *Failure {
	restoreState := i.optional(&i.restoreState, i.caps.restoreState, exportRestoreState)
	if restoreState == nil {
		return nil
	}
	ctx = i.begin(ctx)
	defer i.end()
	ptr, n, failure := i.write(ctx, snapshot)
	if failure != nil {
		return failure
	}
	return status(i.call(ctx, restoreState, uint64(ptr), uint64(n)))
}
