package hotload

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero"
)

// One loaded revision of a plugin: a fixed pool of warm instances that calls check out.
//
// Why a pool of long-lived instances, not one per call: plugins keep state (caches,
// counters) that the ABI hands over across a swap, which needs instances that outlive a
// call, and a pooled call costs a channel receive instead of an instantiation. An instance
// that faulted (trap, deadline, memory limit) is discarded, never lent again; a fresh one
// is created on a later checkout.
//
// Lifetime: a revision counts references, one held by its slot while it serves and one by
// every call or Pinned in flight. The swap only moves the slot's pointer; the last
// reference to go (the swap itself, or the last call that started before it) closes the
// instances. That is how a swap never cuts a call off and never waits for one.

// RevisionID identifies a revision: what a repeated load is compared against.
type RevisionID struct {
	// Plugin is the slot name.
	Plugin string
	// Revision is the revision name given by the sidecar.
	Revision string
	// Digest is the sha256:<hex> of the module.
	Digest string
	// Config is the config handed to the configure export.
	Config []byte
}

// Equal reports whether two IDs name the same plugin, revision, digest and config.
func (a RevisionID) Equal(b RevisionID) bool {
	return a.Plugin == b.Plugin && a.Revision == b.Revision && a.Digest == b.Digest &&
		bytes.Equal(a.Config, b.Config)
}

// revisionSpec is what a revision needs to make instances.
type revisionSpec struct {
	rt   wazero.Runtime
	base wazero.ModuleConfig
	// module is the compiled module, leased from modules: the revision is one of its users.
	modules         *compiledModules
	module          *compiledModule
	memories        *memoryPool
	caps            capabilities
	instances       int
	maxMemory       uint64
	callTimeout     time.Duration
	checkoutTimeout time.Duration
}

type revision struct {
	id   RevisionID
	spec revisionSpec
	// free holds one token per instance a checkout may take: one idle in idle, or one that
	// was discarded and may be re-created. lent + len(free) == instances, and len(free) ==
	// len(idle) + discarded (a token is sent after its instance is pushed, and received
	// before one is popped).
	free chan struct{}
	// idle holds the instances not lent out, the most recently returned last: a checkout
	// takes that one, whose memory and stack are warm in the caches, so calls one at a time
	// keep using one instance, and after a swap only the first call meets a cold one.
	mu   sync.Mutex
	idle []*instance
	refs atomic.Int64
	// health counts the calls; set when the revision starts serving (a revision that never
	// served has made no calls).
	health *revisionHealth
}

// instantiateError says which step of making an instance ready failed.
type instantiateError struct {
	configure bool
	failure   Failure
}

// newRevision creates the revision with all its instances configured; it holds one
// reference (the caller's, handed to the slot on the swap). It owns the lease on spec.module
// from here on, also when it fails.
func newRevision(ctx context.Context, id RevisionID, spec revisionSpec) (*revision, *instantiateError) {
	r := &revision{
		id:   id,
		spec: spec,
		free: make(chan struct{}, spec.instances),
		idle: make([]*instance, 0, spec.instances),
	}
	r.refs.Store(1)
	for range spec.instances {
		inst, err := r.instantiate(ctx)
		if err != nil {
			r.release()
			return nil, err
		}
		r.checkin(inst, false)
	}
	return r, nil
}

func (r *revision) instantiate(ctx context.Context) (*instance, *instantiateError) {
	s := r.spec
	inst, failure := newInstance(ctx, s.rt, s.module.compiled, s.base, s.caps, s.maxMemory, s.memories, s.callTimeout)
	if failure != nil {
		return nil, &instantiateError{failure: *failure}
	}
	if failure := inst.Configure(ctx, r.id.Config); failure != nil {
		inst.close()
		return nil, &instantiateError{configure: true, failure: *failure}
	}
	return inst, nil
}

// acquire takes a reference unless the revision is already closed (refs reached zero).
func (r *revision) acquire() bool {
	for {
		n := r.refs.Load()
		if n <= 0 {
			return false
		}
		if r.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// release drops a reference; the last one closes every instance and gives the compiled
// module back to the host's cache (which closes it when it is evicted).
func (r *revision) release() {
	if r.refs.Add(-1) != 0 {
		return
	}
	if r.health != nil {
		r.health.users.Add(-1)
	}
	// Nothing is lent out any more: every holder checked its instance in before releasing.
	r.mu.Lock()
	idle := r.idle
	r.idle = nil
	r.mu.Unlock()
	for _, inst := range idle {
		inst.close()
	}
	r.spec.modules.release(r.spec.module)
}

// checkout borrows an instance, creating one if the pool lost some to faults, waiting up to
// the checkout timeout for one to come back.
func (r *revision) checkout(ctx context.Context) (*instance, error) {
	select {
	case <-r.free:
		return r.take(ctx)
	default:
	}
	start := time.Now()
	timer := time.NewTimer(r.spec.checkoutTimeout)
	defer timer.Stop()
	select {
	case <-r.free:
		return r.take(ctx)
	case <-timer.C:
		return nil, &CallError{Kind: CallBusy, Plugin: r.id.Plugin, Revision: r.id.Revision, Waited: time.Since(start)}
	case <-ctx.Done():
		return nil, fmt.Errorf("plugin %s revision %s: waiting for a free instance: %w", r.id.Plugin, r.id.Revision, ctx.Err())
	}
}

// take lends the most recently returned idle instance, or re-creates a discarded one; the
// caller holds a token from free.
func (r *revision) take(ctx context.Context) (*instance, error) {
	r.mu.Lock()
	if n := len(r.idle); n > 0 {
		inst := r.idle[n-1]
		r.idle[n-1] = nil
		r.idle = r.idle[:n-1]
		r.mu.Unlock()
		return inst, nil
	}
	r.mu.Unlock()
	// The token was a discarded instance's.
	inst, err := r.instantiate(ctx)
	if err != nil {
		r.free <- struct{}{}
		return nil, &CallError{Kind: CallReinstantiate, Plugin: r.id.Plugin, Revision: r.id.Revision, Failure: &err.failure}
	}
	return inst, nil
}

// checkin returns an instance; one that faulted may be half-updated and is dropped instead.
func (r *revision) checkin(inst *instance, faulted bool) {
	if faulted {
		inst.close()
	} else {
		r.mu.Lock()
		r.idle = append(r.idle, inst)
		r.mu.Unlock()
	}
	r.free <- struct{}{}
}

// idleCount is the number of idle instances.
func (r *revision) idleCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.idle)
}

// forEachInstance runs f on every instance, until one fails. Only used before the revision
// is published, when every instance is idle and nothing else can reach them.
func (r *revision) forEachInstance(f func(*instance) *Failure) *Failure {
	r.mu.Lock()
	idle := slices.Clone(r.idle)
	r.mu.Unlock()
	for _, inst := range idle {
		if failure := f(inst); failure != nil {
			return failure
		}
	}
	return nil
}

// call handles one request on a pooled instance, and counts it.
func (r *revision) call(ctx context.Context, input []byte) ([]byte, error) {
	start := time.Now()
	out, err := r.handle(ctx, input)
	if r.health != nil {
		r.health.record(time.Since(start), healthKindOf(err))
	}
	return out, err
}

// markFailed counts a returned call the app found failed.
func (r *revision) markFailed() {
	if r.health != nil {
		r.health.markFailed()
	}
}

func (r *revision) handle(ctx context.Context, input []byte) ([]byte, error) {
	inst, err := r.checkout(ctx)
	if err != nil {
		return nil, err
	}
	out, failure := inst.Handle(ctx, input)
	if failure != nil {
		r.checkin(inst, true)
		return nil, &CallError{Kind: CallHandle, Plugin: r.id.Plugin, Revision: r.id.Revision, Failure: failure}
	}
	r.checkin(inst, false)
	return out, nil
}

// Pinned holds one revision of a plugin for the length of a request: every Call through it
// runs on that revision, whatever is loaded or unloaded meanwhile. The swap does not wait
// for it; the revision's instances stay alive until the last pin on it is released, so pin
// for a request, not for a connection or a stream. Safe for concurrent use.
type Pinned struct {
	rev      *revision
	released atomic.Bool
	cleanup  runtime.Cleanup
}

// Call calls the plugin's handle with input on the pinned revision.
func (p *Pinned) Call(ctx context.Context, input []byte) ([]byte, error) {
	// Keeps p (and so the reference its cleanup would drop) alive until the call is over.
	defer runtime.KeepAlive(p)
	if p.released.Load() {
		return nil, ErrPinReleased
	}
	return p.rev.call(ctx, input)
}

// Revision is the pinned revision's identity.
func (p *Pinned) Revision() RevisionID { return p.rev.id }

// Release lets the revision go; calling it again does nothing. A Pinned that is dropped
// without Release is released when the garbage collector finds it, later.
func (p *Pinned) Release() {
	if p.released.Swap(true) {
		return
	}
	p.cleanup.Stop()
	p.rev.release()
}
