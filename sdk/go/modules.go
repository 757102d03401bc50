package hotload

import (
	"context"
	"sync"

	"github.com/tetratelabs/wazero"
)

// Compiled modules by digest, in the host's memory, so that a revision loaded again (a swap
// back, a rollback, a repeated load after an unload, one module under two plugin names)
// neither decodes nor compiles nor reads Config.CacheDir: a hit is a map lookup, and its
// instances run the very machine code the previous ones ran. Without it, a swapped-out
// revision's compiled module was closed, so loading it again decoded the module, hashed it,
// read the cache file, mapped fresh executable memory and compiled the entry preambles
// again; and the closed code was unmapped later, from a finalizer.
//
// What it holds: per digest, the module as this host's runtime compiled it and the ABI
// capabilities found when it was checked (both depend on the bytes and the host alone; the
// digest was checked against the delivered bytes before every lookup, so a hit is the same
// bytes). Modules that failed to compile or to pass the checks are not kept.
//
// Bounds: a module that a revision still uses (serving, pinned, or finishing calls) is always
// kept, since the revision holds it anyway. Of the others, at most Config.ModuleCacheEntries
// and at most Config.ModuleCacheBytes of wasm (the delivered size; wazero's machine code for a
// module is larger, by a factor that depends on the module) stay, least recently used out
// first, and an evicted one is closed. The same bounds as the Node SDK's module cache.
type compiledModules struct {
	maxEntries int
	maxBytes   uint64

	mu       sync.Mutex
	byDigest map[string]*compiledModule
	// clock orders uses: the unused module with the smallest lastUsed goes first.
	clock  uint64
	closed bool
}

// compiledModule is one compiled module and the revisions using it.
type compiledModule struct {
	digest   string
	compiled wazero.CompiledModule
	caps     capabilities
	size     uint64

	// Under the cache's mu.
	users    int
	lastUsed uint64
	// detached: not (or no longer) in the cache's map; closed when its last user goes.
	detached bool
}

func newCompiledModules(maxEntries int, maxBytes uint64) *compiledModules {
	return &compiledModules{maxEntries: maxEntries, maxBytes: maxBytes, byDigest: map[string]*compiledModule{}}
}

// lease returns the module compiled from digest with one more user, or nil.
func (c *compiledModules) lease(digest string) *compiledModule {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.byDigest[digest]
	if m == nil {
		return nil
	}
	m.users++
	c.clock++
	m.lastUsed = c.clock
	return m
}

// add keeps a module that passed every check and returns it with one user. If another load
// added the same digest meanwhile, that one is returned and compiled is closed.
func (c *compiledModules) add(digest string, compiled wazero.CompiledModule, caps capabilities, size uint64) *compiledModule {
	c.mu.Lock()
	if had := c.byDigest[digest]; had != nil {
		had.users++
		c.clock++
		had.lastUsed = c.clock
		c.mu.Unlock()
		_ = compiled.Close(context.Background())
		return had
	}
	m := &compiledModule{digest: digest, compiled: compiled, caps: caps, size: size, users: 1}
	if c.closed {
		m.detached = true
		c.mu.Unlock()
		return m
	}
	c.clock++
	m.lastUsed = c.clock
	c.byDigest[digest] = m
	evicted := c.trim()
	c.mu.Unlock()
	closeModules(evicted)
	return m
}

// release drops one user of m (a revision that is gone).
func (c *compiledModules) release(m *compiledModule) {
	c.mu.Lock()
	m.users--
	var evicted []*compiledModule
	switch {
	case m.users > 0:
	case m.detached:
		evicted = []*compiledModule{m}
	default:
		evicted = c.trim()
	}
	c.mu.Unlock()
	closeModules(evicted)
}

// trim takes unused modules out, least recently used first, until the unused ones fit the
// bounds; it returns them for the caller to close once mu is released. Called with mu held.
func (c *compiledModules) trim() []*compiledModule {
	count, bytes := 0, uint64(0)
	for _, m := range c.byDigest {
		if m.users == 0 {
			count++
			bytes += m.size
		}
	}
	var evicted []*compiledModule
	for count > max(c.maxEntries, 0) || bytes > c.maxBytes {
		var oldest *compiledModule
		for _, m := range c.byDigest {
			if m.users == 0 && (oldest == nil || m.lastUsed < oldest.lastUsed) {
				oldest = m
			}
		}
		delete(c.byDigest, oldest.digest)
		oldest.detached = true
		evicted = append(evicted, oldest)
		count--
		bytes -= oldest.size
	}
	return evicted
}

// close forgets every module (the runtime, closed next, closes them all); later loads miss.
func (c *compiledModules) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for digest, m := range c.byDigest {
		m.detached = true
		delete(c.byDigest, digest)
	}
}

// digests returns the digests kept, with how many revisions use each (for tests).
func (c *compiledModules) digests() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.byDigest))
	for digest, m := range c.byDigest {
		out[digest] = m.users
	}
	return out
}

func closeModules(ms []*compiledModule) {
	for _, m := range ms {
		_ = m.compiled.Close(context.Background())
	}
}
