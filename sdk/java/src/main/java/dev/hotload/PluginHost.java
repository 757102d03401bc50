package dev.hotload;

import com.dylibso.chicory.compiler.InterpreterFallback;
import com.dylibso.chicory.compiler.MachineFactoryCompiler;
import com.dylibso.chicory.runtime.HostFunction;
import com.dylibso.chicory.runtime.Instance;
import com.dylibso.chicory.runtime.Machine;
import com.dylibso.chicory.wasi.WasiPreview1;
import com.dylibso.chicory.wasm.Parser;
import com.dylibso.chicory.wasm.WasmModule;
import com.dylibso.chicory.wasm.types.Export;
import com.dylibso.chicory.wasm.types.FunctionImport;
import com.dylibso.chicory.wasm.types.FunctionType;
import com.dylibso.chicory.wasm.types.Import;
import com.dylibso.chicory.wasm.types.ExternalType;
import com.dylibso.chicory.wasm.types.ValType;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicReference;
import java.util.concurrent.locks.ReentrantLock;
import java.util.function.Function;
import java.util.stream.Collectors;

/**
 * Holds named plugin slots, each serving one revision, on Chicory (pure JVM).
 *
 * <pre>
 * load(req) ─ verify digest ─ parse ─ ABI check ─ instantiate pool ─ configure
 *     │       self_check ─ state hand-over (old.save_state → new.restore_state)
 *     │       beforeUnload hook
 *     └────── slot.current.set(new)   ◄── the only critical section
 * call(plugin) ─ slot.current.get() ─ take a reference ─ checkout ─ handle ─ release
 * pin(plugin)  ─ slot.current.get() ─ take a reference ─ Pinned ─ call, call, … ─ close
 * </pre>
 *
 * Everything before the set happens off the request path, on the loading thread ({@link
 * #loadAsync} runs it on the host's background executor); a failure anywhere leaves the slot
 * untouched. A call holds a reference to the revision it started on, so it finishes there.
 */
public final class PluginHost implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger("dev.hotload");

    private final HostConfig cfg;
    /** What the sandboxed WASI provides: name to signature. */
    private final Map<String, String> wasi;
    private final ConcurrentHashMap<String, Slot> slots = new ConcurrentHashMap<>();
    private final HealthTable health = new HealthTable();
    private final Object slotsLock = new Object();
    private final ExecutorService loader = Executors.newSingleThreadExecutor(r -> {
        Thread t = new Thread(r, "hotload-loader");
        t.setDaemon(true);
        return t;
    });

    private static final class Slot {
        final AtomicReference<Revision> current = new AtomicReference<>();
        /** Serialises loads of one plugin; other plugins load concurrently. */
        final ReentrantLock loading = new ReentrantLock();
    }

    private final CompileCache cache;
    /** Every plugin's serving revision and the one before it, compiled. */
    private final CompiledModules modules;

    /**
     * A host with the given limits. Close it when done.
     *
     * @throws java.io.UncheckedIOException when the cache directory cannot be created
     */
    public PluginHost(HostConfig cfg) {
        this.cfg = cfg;
        this.modules = new CompiledModules(2 * cfg.maxPlugins);
        try {
            this.cache = cfg.cacheDir == null ? null : new CompileCache(cfg.cacheDir);
        } catch (java.io.IOException e) {
            throw new java.io.UncheckedIOException("hotload: compilation cache " + cfg.cacheDir, e);
        }
        Map<String, String> w = new HashMap<>();
        try (WasiPreview1 probe = PluginInstance.sandboxedWasi()) {
            for (HostFunction f : probe.toHostFunctions()) {
                w.put(f.name(), signature(f.functionType()));
            }
        }
        this.wasi = Collections.unmodifiableMap(w);
    }

    /** A host with the default limits. */
    public PluginHost() {
        this(HostConfig.defaults());
    }

    /** The host's configuration. */
    HostConfig config() {
        return cfg;
    }

    /** Stops the background loader. Revisions already loaded stay usable until dropped. */
    @Override
    public void close() {
        loader.shutdownNow();
    }

    private Revision acquire(String plugin) throws CallException {
        Slot s = slots.get(plugin);
        while (s != null) {
            Revision r = s.current.get();
            if (r == null) {
                break;
            }
            if (r.acquire()) {
                return r;
            }
            // r was swapped out and released between the two reads: the slot holds its successor.
        }
        throw CallException.notLoaded(plugin);
    }

    /**
     * Calls plugin's handle with input on the revision serving right now, under the call
     * timeout. A request that calls more than once and needs one revision throughout uses
     * {@link #pin}.
     */
    public byte[] call(String plugin, byte[] input) throws CallException, InterruptedException {
        Revision r = acquire(plugin);
        try {
            return r.call(input);
        } finally {
            r.release();
        }
    }

    /**
     * Holds the revision serving plugin right now for all the calls of one request; close it
     * when the request is done. Fails {@code not_loaded} when nothing serves.
     */
    public Pinned pin(String plugin) throws CallException {
        return new Pinned(acquire(plugin));
    }

    /**
     * Counts one call to plugin that returned as failed (its answer was unusable, say) on the
     * revision serving now; false when none serves. To mark the very revision a request called,
     * even across a swap, call through a {@link Pinned} and use {@link Pinned#markFailed()}.
     */
    public boolean markFailed(String plugin) {
        Revision r;
        try {
            r = acquire(plugin);
        } catch (CallException e) {
            return false;
        }
        try {
            r.markFailed();
            return true;
        } finally {
            r.release();
        }
    }

    /**
     * What each plugin revision did since the previous call (only revisions with calls, sorted
     * by plugin and revision), and counting starts afresh. An {@link AppClient} sends it to the
     * sidecar about once a second. Safe to call concurrently with calls.
     */
    public List<PluginHealth> takeHealth() {
        return health.take();
    }

    /** The identity of the revision serving plugin, if any. */
    public Optional<RevisionId> serving(String plugin) {
        Slot s = slots.get(plugin);
        Revision r = s == null ? null : s.current.get();
        return r == null ? Optional.empty() : Optional.of(r.id);
    }

    /** Names of the plugins with a serving revision, sorted. */
    public List<String> plugins() {
        return slots.entrySet().stream()
                .filter(e -> e.getValue().current.get() != null)
                .map(Map.Entry::getKey)
                .sorted()
                .collect(Collectors.toList());
    }

    /** Removes plugin; calls already running (and pins) finish on the revision they hold. */
    public boolean unload(String plugin) {
        Slot s = slots.get(plugin);
        if (s == null || !removeSlot(plugin, s)) {
            return false;
        }
        Revision old;
        s.loading.lock();
        try {
            old = s.current.getAndSet(null);
        } finally {
            s.loading.unlock();
        }
        if (old != null) {
            cfg.hooks.beforeUnload(new Hooks.UnloadEvent(plugin, old.id.revision(), ""));
            old.release();
            LOG.log(System.Logger.Level.INFO, "plugin unloaded: plugin={0} revision={1}", plugin, old.id.revision());
        }
        return true;
    }

    private Slot slotOrCreate(String plugin, String revision) throws LoadException {
        synchronized (slotsLock) {
            Slot s = slots.get(plugin);
            if (s != null) {
                return s;
            }
            if (slots.size() >= cfg.maxPlugins) {
                throw LoadException.tooManyPlugins(plugin, revision, cfg.maxPlugins);
            }
            s = new Slot();
            slots.put(plugin, s);
            return s;
        }
    }

    private boolean removeSlot(String plugin, Slot s) {
        synchronized (slotsLock) {
            return slots.remove(plugin, s);
        }
    }

    /** Runs {@link #load} on the host's background loader, off the request path. */
    public CompletableFuture<Loaded> loadAsync(LoadRequest req) {
        CompletableFuture<Loaded> f = new CompletableFuture<>();
        loader.execute(() -> {
            try {
                f.complete(load(req));
            } catch (LoadException | RuntimeException e) {
                f.completeExceptionally(e);
            }
        });
        return f;
    }

    /**
     * Makes req.revision the serving revision of req.plugin. On any failure the previous
     * revision keeps serving and the {@link LoadException} says precisely why. A request for
     * the revision already serving (same digest and config) returns at once, swapped false.
     * Loads of one plugin are serialised; never call this on a request.
     */
    public Loaded load(LoadRequest req) throws LoadException {
        try {
            Loaded l = doLoad(req);
            LOG.log(System.Logger.Level.INFO, "plugin loaded: plugin={0} revision={1} swapped={2}", req.plugin(), req.revision(), l.swapped());
            return l;
        } catch (LoadException e) {
            LOG.log(System.Logger.Level.WARNING, "plugin load failed; previous revision keeps serving: {0}", e.getMessage());
            cfg.hooks.loadFailed(req.plugin(), req.revision(), e);
            throw e;
        }
    }

    /** Reports a load that failed before it reached the host (an unreadable file). */
    void reportLoadFailed(LoadException e) {
        cfg.hooks.loadFailed(e.plugin(), e.revision(), e);
    }

    private Loaded doLoad(LoadRequest req) throws LoadException {
        long start = System.nanoTime();
        if (!Abi.wellFormedDigest(req.digest())) {
            throw LoadException.badDigest(req.plugin(), req.revision(), req.digest());
        }
        String actual = Abi.digest(req.wasm());
        if (!actual.equals(req.digest())) {
            throw LoadException.digestMismatch(req.plugin(), req.revision(), req.digest(), actual);
        }
        RevisionId id = new RevisionId(req.plugin(), req.revision(), req.digest(), req.config());
        while (true) {
            Slot s = slotOrCreate(id.plugin(), id.revision());
            s.loading.lock();
            try {
                if (slots.get(id.plugin()) != s) {
                    // Unloaded (or given up after a failed first load) while this load waited.
                    continue;
                }
                try {
                    return loadInto(s, id, req.wasm(), start);
                } catch (LoadException e) {
                    if (s.current.get() == null) {
                        // A failed first load leaves no empty slot behind to count against maxPlugins.
                        removeSlot(id.plugin(), s);
                    }
                    throw e;
                }
            } finally {
                s.loading.unlock();
            }
        }
    }

    private Loaded loadInto(Slot s, RevisionId id, byte[] wasm, long start) throws LoadException {
        Revision old = s.current.get();
        if (old != null && old.id.equals(id)) {
            Duration total = Duration.ofNanos(System.nanoTime() - start);
            return new Loaded(id.revision(), false, false, -1, "hit", Duration.ZERO, total, Duration.ZERO);
        }
        String p = id.plugin();
        String rv = id.revision();
        long t = System.nanoTime();
        Lookup found = compiled(id.digest(), wasm, p, rv);
        Duration compile = Duration.ofNanos(System.nanoTime() - t);
        CompiledModules.Compiled c = found.module();
        Abi.Capabilities caps = c.caps();
        Revision rev;
        try {
            rev = Revision.create(id, new Revision.Spec(c, cfg.instancesPerRevision, cfg.maxMemoryBytes, cfg.callTimeout, cfg.checkoutTimeout));
        } catch (Revision.InstantiateFailure e) {
            if (e.configure) {
                throw LoadException.guest(LoadException.Kind.CONFIGURE, p, rv, e.failure);
            }
            throw LoadException.instantiate(p, rv, e.failure);
        }
        boolean selfChecked = false;
        int stateBytes = -1;
        try {
            if (caps.selfCheck) {
                Failure f = rev.forEachInstance(PluginInstance::selfCheck);
                if (f != null) {
                    throw LoadException.guest(LoadException.Kind.SELF_CHECK, p, rv, f);
                }
                selfChecked = true;
            }
            if (old != null && old.spec.module().caps().saveState && caps.restoreState) {
                byte[] snapshot = saveState(old, p, rv);
                Failure f = rev.forEachInstance(i -> i.restoreState(snapshot));
                if (f != null) {
                    throw LoadException.guest(LoadException.Kind.RESTORE_STATE, p, rv, f);
                }
                stateBytes = snapshot.length;
            }
        } catch (LoadException e) {
            rev.release();
            throw e;
        }
        if (old != null) {
            cfg.hooks.beforeUnload(new Hooks.UnloadEvent(p, old.id.revision(), rv));
        }
        rev.countIn(health);
        t = System.nanoTime();
        s.current.set(rev);
        Duration swap = Duration.ofNanos(System.nanoTime() - t);
        String previous = "";
        if (old != null) {
            previous = old.id.revision();
            // The slot's reference; calls still running on old keep theirs.
            old.release();
        }
        cfg.hooks.afterLoad(new Hooks.LoadEvent(p, rv, previous, swap));
        return new Loaded(rv, true, selfChecked, stateBytes, found.outcome(), compile, Duration.ofNanos(System.nanoTime() - start), swap);
    }

    /** A module ready to instantiate, and where it came from ({@link Loaded#cache()}). */
    private record Lookup(CompiledModules.Compiled module, String outcome) {}

    /**
     * The module for digest: from memory when this host has loaded it before (a hit), else
     * parsed, checked against the ABI and compiled (through the cache directory, if any).
     */
    private Lookup compiled(String digest, byte[] wasm, String p, String rv) throws LoadException {
        CompiledModules.Compiled known = modules.get(digest);
        if (known != null) {
            return new Lookup(known, "hit");
        }
        WasmModule module;
        try {
            module = Parser.parse(wasm);
        } catch (RuntimeException e) {
            throw LoadException.invalidWasm(p, rv, firstLine(e.getMessage()), e);
        }
        Abi.Capabilities caps = checkModule(module, p, rv);
        Function<Instance, Machine> machine = null;
        String cacheOutcome = "uncached";
        if (cfg.compile) {
            try {
                MachineFactoryCompiler.Builder b = MachineFactoryCompiler.builder(module).withInterpreterFallback(InterpreterFallback.SILENT);
                CompileCache.Tracking tracking = cache == null ? null : new CompileCache.Tracking(cache);
                if (tracking != null) {
                    b.withCache(tracking);
                }
                machine = b.compile();
                if (tracking != null) {
                    cacheOutcome = tracking.hit.get() && !tracking.miss.get() ? "hit" : "miss";
                }
            } catch (RuntimeException e) {
                throw LoadException.invalidWasm(p, rv, firstLine(e.getMessage()), e);
            }
        }
        CompiledModules.Compiled c = new CompiledModules.Compiled(module, caps, machine, exportNames(module).contains(Abi.INITIALIZE),
                module.importSection().importCount() > 0);
        modules.put(digest, c);
        return new Lookup(c, cacheOutcome);
    }

    /**
     * Takes one snapshot from one of old's instances. An instance whose save_state failed may
     * be half-written: it is dropped, and old keeps serving from the others.
     */
    private static byte[] saveState(Revision old, String plugin, String revision) throws LoadException {
        PluginInstance inst;
        try {
            inst = old.checkout();
        } catch (CallException e) {
            throw LoadException.guest(LoadException.Kind.SAVE_STATE, plugin, revision, Failure.other(e.getMessage()));
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw LoadException.guest(LoadException.Kind.SAVE_STATE, plugin, revision, Failure.canceled());
        }
        try {
            byte[] snapshot = inst.saveState();
            old.checkin(inst, false);
            return snapshot;
        } catch (Guest.Fault f) {
            old.checkin(inst, true);
            throw LoadException.guest(LoadException.Kind.SAVE_STATE, plugin, revision, f.failure);
        }
    }

    private static List<String> exportNames(WasmModule m) {
        List<String> names = new ArrayList<>();
        for (int i = 0; i < m.exportSection().exportCount(); i++) {
            names.add(m.exportSection().getExport(i).name());
        }
        return names;
    }

    /** Checks a module against the ABI, the imports the host provides and the memory limit. */
    private Abi.Capabilities checkModule(WasmModule m, String plugin, String revision) throws LoadException {
        List<FunctionImport> funcImports = new ArrayList<>();
        for (int i = 0; i < m.importSection().importCount(); i++) {
            Import imp = m.importSection().getImport(i);
            if (imp instanceof FunctionImport) {
                funcImports.add((FunctionImport) imp);
            }
        }
        Map<String, String> exports = new HashMap<>();
        for (int i = 0; i < m.exportSection().exportCount(); i++) {
            Export e = m.exportSection().getExport(i);
            if (e.exportType() == ExternalType.MEMORY) {
                exports.put(e.name(), "Memory");
            } else if (e.exportType() == ExternalType.FUNCTION) {
                int idx = e.index();
                int typeIdx = idx < funcImports.size()
                        ? funcImports.get(idx).typeIndex()
                        : m.functionSection().getFunctionType(idx - funcImports.size());
                exports.put(e.name(), signature(m.typeSection().getType(typeIdx)));
            } else {
                exports.put(e.name(), "Other");
            }
        }
        Abi.Capabilities caps;
        try {
            caps = Abi.checkExports(exports);
        } catch (Abi.Violation v) {
            throw LoadException.abi(plugin, revision, v.getMessage());
        }
        for (int i = 0; i < m.importSection().importCount(); i++) {
            Import imp = m.importSection().getImport(i);
            String want = Abi.WASI_MODULE.equals(imp.module()) ? wasi.get(imp.name()) : null;
            if (!(imp instanceof FunctionImport) || want == null) {
                throw LoadException.abi(plugin, revision, "imports cannot be satisfied (plugins get none): unknown import: `"
                        + imp.module() + "::" + imp.name() + "` has not been defined");
            }
            String got = signature(m.typeSection().getType(((FunctionImport) imp).typeIndex()));
            if (!got.equals(want)) {
                throw LoadException.abi(plugin, revision, "imports cannot be satisfied (plugins get none): import `"
                        + imp.module() + "::" + imp.name() + "` has signature " + got + ", want " + want);
            }
        }
        if (m.memorySection().isPresent() && m.memorySection().get().memoryCount() > 0) {
            long minBytes = (long) m.memorySection().get().getMemory(0).limits().initialPages() * 65536;
            if (minBytes > cfg.maxMemoryBytes) {
                throw LoadException.invalidWasm(plugin, revision, "memory `" + Abi.MEMORY + "` declares " + minBytes
                        + " bytes, which exceeds the limit of " + cfg.maxMemoryBytes + " bytes", null);
            }
        }
        return caps;
    }

    /** A function type written like "(i32,i32)->i64". */
    static String signature(FunctionType t) {
        return "(" + names(t.params()) + ")->" + names(t.returns());
    }

    private static String names(List<ValType> ts) {
        return ts.stream().map(v -> v.name().toLowerCase(java.util.Locale.ROOT)).collect(Collectors.joining(","));
    }

    private static String firstLine(String s) {
        if (s == null) {
            return "not a module";
        }
        int i = s.indexOf('\n');
        return i < 0 ? s : s.substring(0, i);
    }
}
