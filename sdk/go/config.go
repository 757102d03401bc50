package hotload

import (
	"log/slog"
	"time"
)

// Config holds the limits and knobs of a Host. The zero value of every field means its
// production default, the same as hotload-host's HostConfig.
type Config struct {
	// MaxMemoryBytes is the ceiling of one instance's linear memory (default 64 MiB). A
	// guest that grows past it traps with a memory-limit failure; a module that declares
	// a larger initial memory is refused at load.
	MaxMemoryBytes uint64
	// CallTimeout is the longest one guest call (request, self-check, configure, state
	// hand-over) may run (default 500 ms). It bounds CPU time and WASI sleeps alike.
	CallTimeout time.Duration
	// InstancesPerRevision is the number of warm instances a revision keeps: the most calls
	// one plugin serves in parallel (default 4).
	InstancesPerRevision int
	// CheckoutTimeout is how long a call waits for a free instance before it fails busy
	// (default 2 s).
	CheckoutTimeout time.Duration
	// MaxPlugins is the most named plugins one host holds (default 16).
	MaxPlugins int
	// CacheDir, when set, keeps wazero's compiled code on disk, so a restarted app (or a
	// rollback to a revision it ran before) skips compilation.
	CacheDir string
	// ModuleCacheEntries is the most compiled modules the host keeps in memory, by digest,
	// that no revision uses any more (default 8; negative keeps none): loading one of them
	// again (a swap back, a rollback) compiles nothing and reads no CacheDir. Modules of
	// revisions still in use are kept besides, always.
	ModuleCacheEntries int
	// ModuleCacheBytes is the most wasm bytes of those unused modules (default 64 MiB).
	ModuleCacheBytes uint64
	// Hooks receives load events; nil means none.
	Hooks Hooks
	// Logger receives the host's structured logs; nil means slog.Default().
	Logger *slog.Logger
}

// withDefaults fills the zero fields.
func (c Config) withDefaults() Config {
	if c.MaxMemoryBytes == 0 {
		c.MaxMemoryBytes = 64 << 20
	}
	if c.CallTimeout <= 0 {
		c.CallTimeout = 500 * time.Millisecond
	}
	if c.InstancesPerRevision <= 0 {
		c.InstancesPerRevision = 4
	}
	if c.CheckoutTimeout <= 0 {
		c.CheckoutTimeout = 2 * time.Second
	}
	if c.MaxPlugins <= 0 {
		c.MaxPlugins = 16
	}
	if c.ModuleCacheEntries == 0 {
		c.ModuleCacheEntries = 8
	}
	if c.ModuleCacheBytes == 0 {
		c.ModuleCacheBytes = 64 << 20
	}
	if c.Hooks == nil {
		c.Hooks = NoHooks{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}
