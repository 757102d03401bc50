package hotload

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
)

// Host holds named plugin slots, each serving one revision, on one wazero runtime.
//
//	Load(req) ─ verify digest ─ compile ─ ABI check ─ instantiate pool ─ configure
//	     │        self_check ─ state hand-over (old.save_state → new.restore_state)
//	     │        BeforeUnload hook
//	     └──────── slot.current.Store(new)   ◄── the only critical section
//	Call(plugin) ─ slot.current.Load() ─ take a reference ─ checkout ─ handle ─ release
//	Pin(plugin)  ─ slot.current.Load() ─ take a reference ─ Pinned ─ Call, Call, … ─ Release
//
// Everything before the store happens off the request path, on the loading goroutine; a
// failure anywhere leaves the slot untouched. A call holds a reference to the revision it
// started on, so it finishes there; a Pinned holds one for a whole request.
type Host struct {
	cfg   Config
	rt    wazero.Runtime
	cache wazero.CompilationCache
	base  wazero.ModuleConfig
	// wasi is what the sandboxed WASI module provides: name → signature.
	wasi map[string]string
	// modules keeps compiled modules by digest (modules.go); memories keeps the linear
	// memories of closed instances for the next ones (memory.go).
	modules  *compiledModules
	memories *memoryPool

	// slots is replaced whole (copy on write) under mu, so a call reads it without a lock.
	slots atomic.Pointer[map[string]*slot]
	mu    sync.Mutex
	// health counts calls per plugin revision until TakeHealth drains them.
	health healthTable
}

type slot struct {
	current atomic.Pointer[revision]
	// loading serialises loads of one plugin; other plugins load concurrently.
	loading sync.Mutex
}

// LoadRequest asks to make Revision of Plugin the serving one.
type LoadRequest struct {
	// Plugin is the slot name.
	Plugin string
	// Revision is the revision name (opaque to the host).
	Revision string
	// Digest is the expected sha256:<hex> of Wasm.
	Digest string
	// Config is handed to the plugin's configure export (empty when the release has none).
	Config []byte
	// Wasm is the module (binary Wasm).
	Wasm []byte
}

// ReadLoadRequest reads the module from path (the sidecar's store on the shared volume).
func ReadLoadRequest(plugin, revision, path, digest string, config []byte) (LoadRequest, error) {
	wasm, err := os.ReadFile(path)
	if err != nil {
		return LoadRequest{}, &LoadError{Kind: LoadRead, Plugin: plugin, Revision: revision, Path: path, Err: err}
	}
	return LoadRequest{Plugin: plugin, Revision: revision, Digest: digest, Config: config, Wasm: wasm}, nil
}

// CacheOutcome says where a load's compiled code came from.
type CacheOutcome string

// Where compiled code comes from.
const (
	// CacheHit: compiled code was reused: kept in memory from an earlier load of the same
	// digest (Config.ModuleCacheEntries), or read from Config.CacheDir.
	CacheHit CacheOutcome = "hit"
	// CacheMiss: compiled, and stored in Config.CacheDir for next time.
	CacheMiss CacheOutcome = "miss"
	// CacheNone: compiled; no cache directory configured.
	CacheNone CacheOutcome = "uncached"
)

// StateHandover says whether state moved across the swap.
type StateHandover struct {
	// Restored is true when a snapshot was restored into every new instance.
	Restored bool
	// Bytes is the snapshot's size.
	Bytes int
}

func (s StateHandover) String() string {
	if !s.Restored {
		return "none"
	}
	return fmt.Sprintf("restored %d bytes", s.Bytes)
}

// Loaded describes a successful load.
type Loaded struct {
	// Revision is the revision now serving.
	Revision string
	// Swapped is false when the request named the revision already serving (nothing was
	// done, as on every reconnect, when the sidecar sends the whole set again).
	Swapped bool
	// Cache says where the compiled code came from.
	Cache CacheOutcome
	// SelfChecked is true when the plugin exported a self-check (and passed it).
	SelfChecked bool
	// State says whether state was handed over.
	State StateHandover
	// Compile, Total and Swap are the wall time of compilation, of the whole load and of
	// the atomic swap alone.
	Compile, Total, Swap time.Duration
}

// Health is the one-line summary an app sends with `loaded`.
func (l *Loaded) Health() string {
	if !l.Swapped {
		return "already serving"
	}
	check := "absent"
	if l.SelfChecked {
		check = "passed"
	}
	return fmt.Sprintf("self-check %s; state %s; cache %s; load %.1f ms; swap %.1f µs",
		check, l.State, l.Cache, float64(l.Total.Microseconds())/1e3, float64(l.Swap.Nanoseconds())/1e3)
}

// NewHost starts a host: one wazero runtime (compiler where supported) whose guest calls stop
// when their context is done, with sandboxed WASI preview1 as the only import plugins get.
// Close it when done.
func NewHost(ctx context.Context, cfg Config) (*Host, error) {
	cfg = cfg.withDefaults()
	rc := wazero.NewRuntimeConfig().WithCloseOnContextDone(true)
	var cache wazero.CompilationCache
	if cfg.CacheDir != "" {
		c, err := wazero.NewCompilationCacheWithDir(cfg.CacheDir)
		if err != nil {
			return nil, fmt.Errorf("hotload: compilation cache %s: %w", cfg.CacheDir, err)
		}
		cache = c
		rc = rc.WithCompilationCache(cache)
	}
	rt := wazero.NewRuntimeWithConfig(ctx, rc)
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt); err != nil {
		_ = rt.Close(ctx)
		return nil, fmt.Errorf("hotload: instantiate WASI: %w", err)
	}
	wasi := map[string]string{}
	for name, def := range rt.Module(wasiModule).ExportedFunctionDefinitions() {
		wasi[name] = signature(def)
	}
	h := &Host{
		cfg:   cfg,
		rt:    rt,
		cache: cache,
		// The WASI a plugin gets: real clocks and randomness, nothing else. No files,
		// environment, arguments or sockets; stdout and stderr are discarded. Enough for
		// the runtimes of compiled languages (Go, Rust, C) to start, nothing to escape with.
		// No start functions: _start belongs to commands; reactors get _initialize.
		base: wazero.NewModuleConfig().WithName("").WithStartFunctions().
			WithSysWalltime().WithSysNanotime().WithRandSource(rand.Reader),
		wasi:     wasi,
		modules:  newCompiledModules(max(cfg.ModuleCacheEntries, 0), cfg.ModuleCacheBytes),
		memories: &memoryPool{},
	}
	h.slots.Store(&map[string]*slot{})
	return h, nil
}

// Close closes every instance and the runtime. In-flight calls fail.
func (h *Host) Close(ctx context.Context) error {
	// Before the runtime: closing it frees the memories of calls still running, which must
	// not be handed to anyone else, and closes every compiled module.
	h.memories.close()
	h.modules.close()
	err := h.rt.Close(ctx)
	if h.cache != nil {
		err = errors.Join(err, h.cache.Close(ctx))
	}
	return err
}

func (h *Host) slot(plugin string) *slot {
	return (*h.slots.Load())[plugin]
}

func (h *Host) slotOrCreate(plugin string) (*slot, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	old := *h.slots.Load()
	if s := old[plugin]; s != nil {
		return s, nil
	}
	if len(old) >= h.cfg.MaxPlugins {
		return nil, &LoadError{Kind: LoadTooManyPlugins, Plugin: plugin, Max: h.cfg.MaxPlugins}
	}
	s := &slot{}
	next := make(map[string]*slot, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[plugin] = s
	h.slots.Store(&next)
	return s, nil
}

// removeSlot removes plugin's slot if it is still s.
func (h *Host) removeSlot(plugin string, s *slot) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	old := *h.slots.Load()
	if old[plugin] != s {
		return false
	}
	next := make(map[string]*slot, len(old))
	for k, v := range old {
		if k != plugin {
			next[k] = v
		}
	}
	h.slots.Store(&next)
	return true
}

// acquire takes a reference to the revision serving plugin right now.
func (h *Host) acquire(plugin string) (*revision, error) {
	s := h.slot(plugin)
	for s != nil {
		r := s.current.Load()
		if r == nil {
			break
		}
		if r.acquire() {
			return r, nil
		}
		// r was swapped out and closed between the two loads: the slot holds its successor.
	}
	return nil, &CallError{Kind: CallNotLoaded, Plugin: plugin}
}

// Call calls plugin's handle with input on the revision serving right now, under
// Config.CallTimeout (and ctx). Two calls may run on two revisions if a swap lands between
// them; a request that calls more than once and needs one revision throughout uses Pin.
func (h *Host) Call(ctx context.Context, plugin string, input []byte) ([]byte, error) {
	r, err := h.acquire(plugin)
	if err != nil {
		return nil, err
	}
	defer r.release()
	return r.call(ctx, input)
}

// Pin holds the revision serving plugin right now for all the calls of one request; Release
// it when the request is done. Every call through it runs on that revision, even after a
// load swaps in another or an unload removes the plugin; the swap does not wait for it.
// Fails like Call (errors.Is(err, ErrNotLoaded)) when nothing serves.
func (h *Host) Pin(plugin string) (*Pinned, error) {
	r, err := h.acquire(plugin)
	if err != nil {
		return nil, err
	}
	p := &Pinned{rev: r}
	p.cleanup = runtime.AddCleanup(p, func(r *revision) { r.release() }, r)
	return p, nil
}

// Serving returns the identity of the revision serving plugin, if any.
func (h *Host) Serving(plugin string) (RevisionID, bool) {
	if s := h.slot(plugin); s != nil {
		if r := s.current.Load(); r != nil {
			return r.id, true
		}
	}
	return RevisionID{}, false
}

// Plugins returns the names of the plugins with a serving revision, sorted.
func (h *Host) Plugins() []string {
	var names []string
	for name, s := range *h.slots.Load() {
		if s.current.Load() != nil {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// Unload removes plugin; calls already running (and pins) finish on the revision they hold.
// It reports whether the plugin was there.
func (h *Host) Unload(plugin string) bool {
	s := h.slot(plugin)
	if s == nil || !h.removeSlot(plugin, s) {
		return false
	}
	s.loading.Lock()
	old := s.current.Swap(nil)
	s.loading.Unlock()
	if old != nil {
		h.cfg.Hooks.BeforeUnload(UnloadEvent{Plugin: plugin, Revision: old.id.Revision})
		old.release()
		h.cfg.Logger.Info("plugin unloaded", "plugin", plugin, "revision", old.id.Revision)
	}
	return true
}

// Load makes req.Revision the serving revision of req.Plugin. On any failure the previous
// revision keeps serving and the error (a *LoadError) says precisely why. A request for the
// revision already serving (same digest and config) returns at once with Swapped false.
// Loads of one plugin are serialised; call Load from a loading goroutine, never a request.
func (h *Host) Load(ctx context.Context, req LoadRequest) (*Loaded, error) {
	loaded, err := h.load(ctx, req)
	log := h.cfg.Logger.With("plugin", req.Plugin, "revision", req.Revision)
	if err != nil {
		log.Warn("plugin load failed; previous revision keeps serving", "error", err)
		h.cfg.Hooks.LoadFailed(req.Plugin, req.Revision, err)
		return nil, err
	}
	log.Info("plugin loaded", "swapped", loaded.Swapped, "cache", loaded.Cache,
		"total_ms", float64(loaded.Total.Microseconds())/1e3, "swap_us", float64(loaded.Swap.Nanoseconds())/1e3)
	return loaded, nil
}

func (h *Host) load(ctx context.Context, req LoadRequest) (*Loaded, error) {
	start := time.Now()
	if _, ok := parseSHA256(req.Digest); !ok {
		return nil, &LoadError{Kind: LoadBadDigest, Plugin: req.Plugin, Revision: req.Revision, Expected: req.Digest}
	}
	if actual := Digest(req.Wasm); actual != req.Digest {
		return nil, &LoadError{Kind: LoadDigestMismatch, Plugin: req.Plugin, Revision: req.Revision, Expected: req.Digest, Actual: actual}
	}
	id := RevisionID{Plugin: req.Plugin, Revision: req.Revision, Digest: req.Digest, Config: req.Config}
	for {
		s, err := h.slotOrCreate(id.Plugin)
		if err != nil {
			return nil, err
		}
		s.loading.Lock()
		if h.slot(id.Plugin) != s {
			// Unloaded (or given up after a failed first load) while this load waited.
			s.loading.Unlock()
			continue
		}
		loaded, err := h.loadInto(ctx, s, id, req.Wasm, start)
		if err != nil && s.current.Load() == nil {
			// A first load that failed leaves no empty slot behind to count against MaxPlugins.
			h.removeSlot(id.Plugin, s)
		}
		s.loading.Unlock()
		return loaded, err
	}
}

// loadInto loads id into s, whose loading lock the caller holds.
func (h *Host) loadInto(ctx context.Context, s *slot, id RevisionID, wasm []byte, start time.Time) (*Loaded, error) {
	old := s.current.Load()
	if old != nil && old.id.Equal(id) {
		return &Loaded{Revision: id.Revision, Cache: CacheHit, Total: time.Since(start)}, nil
	}
	lerr := func(kind LoadErrorKind) *LoadError {
		return &LoadError{Kind: kind, Plugin: id.Plugin, Revision: id.Revision}
	}
	guest := func(kind LoadErrorKind, f Failure) *LoadError {
		e := lerr(kind)
		e.Failure = &f
		return e
	}

	t := time.Now()
	module, cache, loadErr := h.module(ctx, id, wasm, lerr)
	if loadErr != nil {
		return nil, loadErr
	}
	compile := time.Since(t)
	caps := module.caps
	rev, ierr := newRevision(ctx, id, revisionSpec{
		rt:              h.rt,
		base:            h.base,
		modules:         h.modules,
		module:          module,
		memories:        h.memories,
		caps:            caps,
		instances:       h.cfg.InstancesPerRevision,
		maxMemory:       h.cfg.MaxMemoryBytes,
		callTimeout:     h.cfg.CallTimeout,
		checkoutTimeout: h.cfg.CheckoutTimeout,
	})
	if ierr != nil {
		if ierr.configure {
			return nil, guest(LoadConfigure, ierr.failure)
		}
		return nil, guest(LoadInstantiate, ierr.failure)
	}
	fail := func(e error) (*Loaded, error) {
		rev.release()
		return nil, e
	}
	selfChecked := false
	if caps.selfCheck {
		if f := rev.forEachInstance(func(i *instance) *Failure { return i.SelfCheck(ctx) }); f != nil {
			return fail(guest(LoadSelfCheck, *f))
		}
		selfChecked = true
	}
	var state StateHandover
	if old != nil && old.spec.caps.saveState && caps.restoreState {
		snapshot, f := saveState(ctx, old)
		if f != nil {
			return fail(guest(LoadSaveState, *f))
		}
		if f := rev.forEachInstance(func(i *instance) *Failure { return i.RestoreState(ctx, snapshot) }); f != nil {
			return fail(guest(LoadRestoreState, *f))
		}
		state = StateHandover{Restored: true, Bytes: len(snapshot)}
	}
	if old != nil {
		h.cfg.Hooks.BeforeUnload(UnloadEvent{Plugin: id.Plugin, Revision: old.id.Revision, Next: id.Revision})
	}
	rev.health = h.health.join(id.Plugin, id.Revision)
	t = time.Now()
	s.current.Store(rev)
	swap := time.Since(t)
	previous := ""
	if old != nil {
		previous = old.id.Revision
		// The slot's reference; calls still running on old keep theirs.
		old.release()
	}
	h.cfg.Hooks.AfterLoad(LoadEvent{Plugin: id.Plugin, Revision: id.Revision, Previous: previous, Cache: cache, Swap: swap})
	return &Loaded{
		Revision:    id.Revision,
		Swapped:     true,
		Cache:       cache,
		SelfChecked: selfChecked,
		State:       state,
		Compile:     compile,
		Total:       time.Since(start),
		Swap:        swap,
	}, nil
}

// module returns the compiled module of id.Digest, with one more user, from memory (a hit)
// or compiled (through Config.CacheDir, if any) and checked against the ABI.
func (h *Host) module(ctx context.Context, id RevisionID, wasm []byte, lerr func(LoadErrorKind) *LoadError) (*compiledModule, CacheOutcome, *LoadError) {
	if m := h.modules.lease(id.Digest); m != nil {
		return m, CacheHit, nil
	}
	entries := h.cacheEntries()
	compiled, err := h.rt.CompileModule(ctx, wasm)
	if err != nil {
		e := lerr(LoadInvalidWasm)
		e.Reason, e.Err = firstLine(err.Error()), err
		return nil, "", e
	}
	cache := CacheNone
	if h.cfg.CacheDir != "" {
		cache = CacheHit
		if h.cacheEntries() > entries {
			cache = CacheMiss
		}
	}
	caps, reason, kind := h.checkModule(compiled)
	if reason != "" {
		_ = compiled.Close(ctx)
		e := lerr(kind)
		e.Reason = reason
		return nil, "", e
	}
	return h.modules.add(id.Digest, compiled, caps, uint64(len(wasm))), cache, nil
}

// saveState takes one snapshot from one of old's instances. An instance whose save_state
// failed may be half-written: it is dropped, and old keeps serving from the others.
func saveState(ctx context.Context, old *revision) ([]byte, *Failure) {
	inst, err := old.checkout(ctx)
	if err != nil {
		return nil, &Failure{Kind: FailOther, Detail: err.Error()}
	}
	snapshot, _, f := inst.SaveState(ctx)
	old.checkin(inst, f != nil)
	return snapshot, f
}

// checkModule checks a compiled module against the ABI, the imports the host provides and
// the memory limit; reason is empty when it passes.
func (h *Host) checkModule(compiled wazero.CompiledModule) (caps capabilities, reason string, kind LoadErrorKind) {
	exports := map[string]exportKind{}
	for name := range compiled.ExportedMemories() {
		exports[name] = exportKind{memory: true}
	}
	for name, def := range compiled.ExportedFunctions() {
		exports[name] = exportKind{sig: signature(def)}
	}
	caps, err := checkExports(exports)
	if err != nil {
		return caps, err.Error(), LoadABI
	}
	for _, def := range compiled.ImportedFunctions() {
		module, name, _ := def.Import()
		want, ok := h.wasi[name]
		switch {
		case module != wasiModule || !ok:
			return caps, fmt.Sprintf("imports cannot be satisfied (plugins get none): unknown import: `%s::%s` has not been defined", module, name), LoadABI
		case want != signature(def):
			return caps, fmt.Sprintf("imports cannot be satisfied (plugins get none): import `%s::%s` has signature %s, want %s", module, name, signature(def), want), LoadABI
		}
	}
	for _, def := range compiled.ImportedMemories() {
		module, name, _ := def.Import()
		return caps, fmt.Sprintf("imports cannot be satisfied (plugins get none): unknown import: `%s::%s` has not been defined", module, name), LoadABI
	}
	if mem, ok := compiled.ExportedMemories()[exportMemory]; ok {
		if minBytes := uint64(mem.Min()) * 65536; minBytes > h.cfg.MaxMemoryBytes {
			return caps, fmt.Sprintf("memory `%s` declares %d bytes, which exceeds the limit of %d bytes", exportMemory, minBytes, h.cfg.MaxMemoryBytes), LoadInvalidWasm
		}
	}
	return caps, "", ""
}

// signature writes a function type like "(i32,i32)->i64".
func signature(def api.FunctionDefinition) string {
	names := func(ts []api.ValueType) string {
		s := make([]string, len(ts))
		for i, t := range ts {
			s[i] = api.ValueTypeName(t)
		}
		return strings.Join(s, ",")
	}
	return "(" + names(def.ParamTypes()) + ")->" + names(def.ResultTypes())
}

// cacheEntries counts the files in the compilation cache directory (0 without one): a load
// that adds one compiled its module.
func (h *Host) cacheEntries() int {
	if h.cfg.CacheDir == "" {
		return 0
	}
	n := 0
	_ = filepath.WalkDir(h.cfg.CacheDir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return nil
	})
	return n
}
