package hotload

import "github.com/tetratelabs/wazero/experimental"

// limitedMemory backs one instance's linear memory and enforces the memory limit by
// trapping. wazero's own limit (RuntimeConfig.WithMemoryLimitPages) makes memory.grow
// return -1, which a plugin may ignore and limp on, or loop on until its deadline; a trap
// with the sizes in it fails the call (or the load) with the precise reason instead, as
// hotload-host's resource limiter does.
type limitedMemory struct {
	buf   []byte
	limit uint64
}

// limitedAllocator hands every new memory the limit.
func limitedAllocator(limit uint64) experimental.MemoryAllocator {
	return experimental.MemoryAllocatorFunc(func(_, _ uint64) experimental.LinearMemory {
		return &limitedMemory{limit: limit}
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
	// Double (up to the limit) so a guest growing page by page costs amortised copies.
	newCap := min(max(size, 2*uint64(cap(m.buf))), m.limit)
	buf := make([]byte, size, newCap)
	copy(buf, m.buf)
	m.buf = buf
	return buf
}

// Free lets the buffer go.
func (m *limitedMemory) Free() { m.buf = nil }
