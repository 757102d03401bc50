package hotload

import (
	"cmp"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Health per plugin revision (docs/protocol.md, `health`): every call counts on the revision
// it started on, with its wall time in the host (checkout included) in fixed latency buckets
// and, if it failed, the kind of failure, in the same words as hotload-host
// (plugin-sidecar/protocol/src/health.rs):
//
//	trap     the guest trapped, returned an out-of-range answer, or the runtime stopped it
//	timeout  the call ran past CallTimeout
//	memory   the guest grew past MaxMemoryBytes
//	failed   no instance free within CheckoutTimeout, none could be re-created, the caller
//	         gave up, or the app marked a returned call failed (MarkFailed)
//
// TakeHealth drains the counts: what it returns is what happened since the previous
// TakeHealth. A revision that is swapped out keeps its counts until they are taken.

// HealthInterval is how often a Client sends the counts to the sidecar while calls happen.
const HealthInterval = time.Second

// LatencyBuckets is the number of latency buckets in a report: one per bound of
// LatencyBoundsMicros and one for slower calls.
const LatencyBuckets = 20

// LatencyBoundsMicros are the upper bounds, in µs, of every latency bucket but the last
// (1-2-5 steps from 10 µs to 10 s). Never change them: every host's reports must merge.
var LatencyBoundsMicros = [LatencyBuckets - 1]uint64{
	10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000,
	500_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000,
}

// LatencyBucket is the bucket a call of d falls in: the first whose bound is at least d in
// whole µs, else the last. Pure.
func LatencyBucket(d time.Duration) int {
	micros := uint64(max(d.Microseconds(), 0))
	i, _ := slices.BinarySearch(LatencyBoundsMicros[:], micros)
	return i
}

// HealthErrors counts failed calls by kind.
type HealthErrors struct {
	Trap    uint64 `json:"trap"`
	Timeout uint64 `json:"timeout"`
	Memory  uint64 `json:"memory"`
	Failed  uint64 `json:"failed"`
}

// Total is every failed call, whatever the kind.
func (e HealthErrors) Total() uint64 { return e.Trap + e.Timeout + e.Memory + e.Failed }

// PluginHealth is what one revision did since the previous TakeHealth; it marshals to one
// entry of the protocol's `health` message.
type PluginHealth struct {
	Plugin   string `json:"plugin"`
	Revision string `json:"revision"`
	// Calls counts every call, failed ones included.
	Calls  uint64       `json:"calls"`
	Errors HealthErrors `json:"errors"`
	// LatencyMicros counts calls per latency bucket (see LatencyBucket).
	LatencyMicros [LatencyBuckets]uint64 `json:"latency_us"`
}

// healthKind is how a failed call counts.
type healthKind int

const (
	healthOK healthKind = iota
	healthTrap
	healthTimeout
	healthMemory
	healthFailed
)

// healthKindOf classifies a call's error as hotload-host does. Pure.
func healthKindOf(err error) healthKind {
	if err == nil {
		return healthOK
	}
	var ce *CallError
	if !errors.As(err, &ce) {
		// The caller's context ended while the call waited for an instance.
		return healthFailed
	}
	if ce.Kind != CallHandle || ce.Failure == nil {
		// Busy (no instance in time) or no instance could be re-created.
		return healthFailed
	}
	switch ce.Failure.Kind {
	case FailTimeout:
		return healthTimeout
	case FailMemoryLimit:
		return healthMemory
	case FailTrap, FailBadRange, FailOther:
		return healthTrap
	default:
		// Canceled by the caller: the plugin did nothing wrong, but the call failed.
		return healthFailed
	}
}

// revisionHealth holds one (plugin, revision)'s counts since they were last taken. Every
// revision object serving that pair shares it (a rollback loads a revision again).
type revisionHealth struct {
	// users counts the live revision objects that record here; at zero, once drained, the
	// entry leaves the host's table.
	users atomic.Int64

	mu     sync.Mutex
	counts PluginHealth
}

func (rh *revisionHealth) record(elapsed time.Duration, kind healthKind) {
	rh.mu.Lock()
	defer rh.mu.Unlock()
	c := &rh.counts
	c.Calls++
	switch kind {
	case healthTrap:
		c.Errors.Trap++
	case healthTimeout:
		c.Errors.Timeout++
	case healthMemory:
		c.Errors.Memory++
	case healthFailed:
		c.Errors.Failed++
	}
	c.LatencyMicros[LatencyBucket(elapsed)]++
}

func (rh *revisionHealth) markFailed() {
	rh.mu.Lock()
	defer rh.mu.Unlock()
	rh.counts.Errors.Failed++
}

// take drains the counts. A report never has more failed calls than calls (the sidecar
// refuses such a report): marks beyond that, made after their call was already taken, wait
// for the next report with calls.
func (rh *revisionHealth) take() (out PluginHealth, pending bool) {
	rh.mu.Lock()
	defer rh.mu.Unlock()
	out = rh.counts
	e := out.Errors
	room := out.Calls - min(out.Calls, e.Trap+e.Timeout+e.Memory)
	out.Errors.Failed = min(e.Failed, room)
	rh.counts = PluginHealth{Plugin: out.Plugin, Revision: out.Revision}
	rh.counts.Errors.Failed = e.Failed - out.Errors.Failed
	return out, rh.counts.Errors.Failed > 0
}

// healthTable is a host's counts, per (plugin, revision).
type healthTable struct {
	mu      sync.Mutex
	entries map[[2]string]*revisionHealth
}

// join returns the counts of (plugin, revision) for a revision object that starts serving.
func (t *healthTable) join(plugin, revision string) *revisionHealth {
	t.mu.Lock()
	defer t.mu.Unlock()
	key := [2]string{plugin, revision}
	rh := t.entries[key]
	if rh == nil {
		if t.entries == nil {
			t.entries = map[[2]string]*revisionHealth{}
		}
		rh = &revisionHealth{counts: PluginHealth{Plugin: plugin, Revision: revision}}
		t.entries[key] = rh
	}
	rh.users.Add(1)
	return rh
}

// take drains every entry, sorted by plugin and revision; entries of closed revisions go.
func (t *healthTable) take() []PluginHealth {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []PluginHealth
	for key, rh := range t.entries {
		// Read before draining: a revision still serving may record between the drain and
		// a later read, and dropping the entry then would lose that call. At zero no
		// revision records here, and none can join while t.mu is held.
		closed := rh.users.Load() == 0
		c, pending := rh.take()
		if c.Calls > 0 {
			out = append(out, c)
		}
		if !pending && closed {
			delete(t.entries, key)
		}
	}
	slices.SortFunc(out, func(a, b PluginHealth) int {
		return cmp.Or(cmp.Compare(a.Plugin, b.Plugin), cmp.Compare(a.Revision, b.Revision))
	})
	return out
}

// TakeHealth returns what each plugin revision did since the previous TakeHealth (only
// revisions with calls), and starts counting afresh. A Client sends it to the sidecar every
// HealthInterval; an app that runs no Client may export it elsewhere. Safe for concurrent
// use with calls.
func (h *Host) TakeHealth() []PluginHealth { return h.health.take() }

// MarkFailed counts one call to plugin that returned as failed (its answer was unusable, say)
// on the revision serving now; it reports whether one serves. A request that must mark the
// very revision it called, even across a swap, calls through a Pinned and uses
// Pinned.MarkFailed.
func (h *Host) MarkFailed(plugin string) bool {
	r, err := h.acquire(plugin)
	if err != nil {
		return false
	}
	defer r.release()
	r.markFailed()
	return true
}

// MarkFailed counts one call made through the pin that returned as failed (its answer was
// unusable, say) on the pinned revision. It does nothing after Release.
func (p *Pinned) MarkFailed() {
	if p.released.Load() {
		return
	}
	p.rev.markFailed()
}
