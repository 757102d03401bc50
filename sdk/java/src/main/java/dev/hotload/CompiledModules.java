package dev.hotload;

import com.dylibso.chicory.runtime.Instance;
import com.dylibso.chicory.runtime.Machine;
import com.dylibso.chicory.wasm.WasmModule;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.function.Function;

/**
 * Modules a host has parsed, checked and compiled, kept in memory by digest, so that loading a
 * revision again (a swap back, a rollback, a repeated load) neither parses nor defines classes:
 * its instances run the very classes the JIT has already compiled. The cache directory alone
 * would define a new copy of every class on each load, which starts out interpreted.
 *
 * <p>Bounded (least recently used goes first); a module also lives as long as a revision that
 * uses it, so the bound only limits what is kept for revisions no longer serving.
 */
final class CompiledModules {
    /**
     * A module ready to instantiate: Chicory's machine factory works only with this very module
     * object. {@code machine} is null for the interpreter; {@code initialize}: it exports
     * {@code _initialize}; {@code wasi}: it imports anything (the ABI check lets through WASI
     * functions only), so its instances need WASI.
     */
    record Compiled(WasmModule module, Abi.Capabilities caps, Function<Instance, Machine> machine, boolean initialize, boolean wasi) {}

    private final Map<String, Compiled> byDigest;

    CompiledModules(int capacity) {
        this.byDigest = new LinkedHashMap<>(16, 0.75f, true) {
            private static final long serialVersionUID = 1L;

            @Override
            protected boolean removeEldestEntry(Map.Entry<String, Compiled> eldest) {
                return size() > capacity;
            }
        };
    }

    /** The module compiled for digest, or null. */
    synchronized Compiled get(String digest) {
        return byDigest.get(digest);
    }

    /** Keeps a module that passed every check. */
    synchronized void put(String digest, Compiled c) {
        byDigest.put(digest, c);
    }
}
