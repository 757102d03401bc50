package hotload

import (
	"sync"
	"sync/atomic"

	"github.com/tetratelabs/wazero/experimental"
)

// limitedMemory backs one instance's linear memory and enforces the memory limit by
// trapping. wazero's own limit (RuntimeConfig.WithMemoryLimitPages) makes memory.grow
// return -1, which a plugin may ignore and limp on, or loop on until its deadline; a trap
// with the sizes in it fails the call (or the load) with the precise reason instead, as
// hotload-host's resource limiter does.
type limitedMemory struct {
	buf   []byte
	limit uint64
	pool  *memoryPool
}

// limitedAllocator hands every new memory the limit, and the host's pool of freed buffers.
func limitedAllocator(limit uint64, pool *memoryPool) experimental.MemoryAllocator {
	return experimental.MemoryAllocatorFunc(func(_, _ uint64) experimental.LinearMemory {
		return &limitedMemory{limit: limit, pool: pool}
	})
}

// Reallocate grows the buffer to size bytes; past the limit it panics with a
// *memoryLimitError, which wazero recovers and returns (wrapped) from the guest call.
func (m *limitedMemory) Reallocate(size uint64) []byte {
	if size > m.limit {
		panic(&memoryLimitError{requested: size, limit: m.limit})
	}
	if size <= uint64(cap(m.buf)) {
		// Memory never shrinks, so the bytes past len were never written: still zero.
		m.buf = m.buf[:size]
		return m.buf
	}
	if m.buf == nil {
		// A new memory: a freed one of the same size, zeroed, if the pool has one.
		if buf := m.pool.get(size); buf != nil {
			m.buf = buf
			return buf
		}
	}
	// Double (up to the limit) so a guest growing page by page costs amortised copies.
	newCap := min(max(size, 2*uint64(cap(m.buf))), m.limit)
	buf := make([]byte, size, newCap)
	copy(buf, m.buf)
	m.buf = buf
	return buf
}

// Free lets the buffer go: back to the pool, for the next instance to reuse.
func (m *limitedMemory) Free() {
	m.pool.put(m.buf)
	m.buf = nil
}

// memoryPool keeps the linear memories of closed instances for the next instances of the
// same size: a load of a revision builds InstancesPerRevision instances, and the swap frees
// as many, so without it every load allocated (and the garbage collector later reclaimed)
// a revision's worth of memory, by far the largest part of what a load allocates. A reused
// buffer is zeroed before it is handed out (a Wasm memory starts zero), on the loading
// goroutine.
//
// Per buffer capacity, in a sync.Pool: what nobody reuses goes with the garbage collector's
// next cycles, so an app that stops swapping keeps nothing. Only the buffers of modules the
// host closed itself (instance not lent out, or its call over) come here: Host.Close stops
// the pool first, because closing the runtime frees the memories of calls still running.
type memoryPool struct {
	closed atomic.Bool
	// bySize maps a capacity in bytes to a *sync.Pool of *[]byte whose cap is that.
	bySize sync.Map
}

// get returns a zeroed buffer of len and cap size, or nil.
func (p *memoryPool) get(size uint64) []byte {
	if p == nil || size == 0 || p.closed.Load() {
		return nil
	}
	sp, ok := p.bySize.Load(size)
	if !ok {
		return nil
	}
	b, _ := sp.(*sync.Pool).Get().(*[]byte)
	if b == nil {
		return nil
	}
	buf := *b
	// Only the first len bytes were ever in use; past them the buffer is still zero.
	clear(buf)
	return buf[:size]
}

// put keeps buf (which nothing uses any more) for get.
func (p *memoryPool) put(buf []byte) {
	if p == nil || cap(buf) == 0 || p.closed.Load() {
		return
	}
	size := uint64(cap(buf))
	sp, ok := p.bySize.Load(size)
	if !ok {
		sp, _ = p.bySize.LoadOrStore(size, &sync.Pool{})
	}
	sp.(*sync.Pool).Put(&buf)
}

// close stops the pool: buffers freed from now on are left to the garbage collector.
func (p *memoryPool) close() {
	if p != nil {
		p.closed.Store(true)
	}
}
