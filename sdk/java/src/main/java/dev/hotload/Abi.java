package dev.hotload;

import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.Map;

/**
 * The plugin ABI, the same as hotload-host's ({@code plugin-host/src/abi.rs}): the exports a
 * Hotload Wasm plugin provides and how values cross the boundary.
 *
 * <pre>
 * export         signature             required  meaning
 * memory         memory                yes       the linear memory the host reads and writes
 * alloc          (len i32) -&gt; i32      yes       a pointer to len writable bytes
 * handle         (ptr, len i32) -&gt; i64 yes       one request; returns a packed (ptr, len) response
 * configure      (ptr, len i32) -&gt; i32 no        the release's config, once per instance; 0 = accepted
 * self_check     () -&gt; i32             no        run once before the swap; 0 = healthy
 * save_state     () -&gt; i64             no        on the old revision: packed (ptr, len) snapshot
 * restore_state  (ptr, len i32) -&gt; i32 no        on the new revision: 0 = restored
 * </pre>
 *
 * A packed (ptr, len) is {@code (ptr << 32) | len}. Imports: only
 * {@code wasi_snapshot_preview1}, sandboxed. A module exporting {@code _initialize} (a WASI
 * reactor) has it called once per instance before anything else.
 */
public final class Abi {
    private Abi() {}

    static final String INITIALIZE = "_initialize";
    static final String MEMORY = "memory";
    static final String ALLOC = "alloc";
    static final String HANDLE = "handle";
    static final String CONFIGURE = "configure";
    static final String SELF_CHECK = "self_check";
    static final String SAVE_STATE = "save_state";
    static final String RESTORE_STATE = "restore_state";
    static final String WASI_MODULE = "wasi_snapshot_preview1";

    /** Packs a pointer and a length (both unsigned 32-bit) the way plugins return them. */
    public static long pack(long ptr, long len) {
        return ((ptr & 0xffffffffL) << 32) | (len & 0xffffffffL);
    }

    /** The pointer half of a packed (ptr, len), unsigned. */
    public static long unpackPtr(long packed) {
        return packed >>> 32;
    }

    /** The length half of a packed (ptr, len), unsigned. */
    public static long unpackLen(long packed) {
        return packed & 0xffffffffL;
    }

    /** Whether [ptr, ptr + len) lies inside a memory of memLen bytes (ptr and len unsigned). */
    static boolean checkedRange(long ptr, long len, long memLen) {
        return ptr >= 0 && len >= 0 && ptr + len <= memLen;
    }

    /** The optional exports a module provides. */
    static final class Capabilities {
        boolean configure;
        boolean selfCheck;
        boolean saveState;
        boolean restoreState;
    }

    /** An ABI violation, worded for the plugin author. */
    static final class Violation extends Exception {
        private static final long serialVersionUID = 1L;

        Violation(String message) {
            super(message);
        }
    }

    /**
     * Checks exports (name to "Memory", "Other" or a signature like "(i32,i32)-&gt;i64") against
     * the ABI, in hotload-host's words. Pure.
     */
    static Capabilities checkExports(Map<String, String> exports) throws Violation {
        String mem = exports.get(MEMORY);
        if (mem == null) {
            throw new Violation("missing export `" + MEMORY + "` (memory)");
        }
        if (!mem.equals("Memory")) {
            throw new Violation("export `" + MEMORY + "` must be a memory, found " + describe(mem));
        }
        func(exports, ALLOC, "(i32)->i32", true);
        func(exports, HANDLE, "(i32,i32)->i64", true);
        Capabilities caps = new Capabilities();
        caps.configure = func(exports, CONFIGURE, "(i32,i32)->i32", false);
        caps.selfCheck = func(exports, SELF_CHECK, "()->i32", false);
        caps.saveState = func(exports, SAVE_STATE, "()->i64", false);
        caps.restoreState = func(exports, RESTORE_STATE, "(i32,i32)->i32", false);
        return caps;
    }

    private static boolean func(Map<String, String> exports, String name, String sig, boolean required) throws Violation {
        String k = exports.get(name);
        if (k == null) {
            if (required) {
                throw new Violation("missing export `" + name + "` " + sig);
            }
            return false;
        }
        if (k.equals(sig)) {
            return true;
        }
        if (k.startsWith("(")) {
            throw new Violation("export `" + name + "` has signature " + k + ", want " + sig);
        }
        throw new Violation("export `" + name + "` must be a function " + sig + ", found " + describe(k));
    }

    private static String describe(String kind) {
        return kind.startsWith("(") ? "Func(" + Json.quote(kind) + ")" : kind;
    }

    /** The sha256:&lt;hex&gt; digest of b, the form the sidecar sends. */
    public static String digest(byte[] b) {
        try {
            byte[] sum = MessageDigest.getInstance("SHA-256").digest(b);
            StringBuilder s = new StringBuilder("sha256:");
            for (byte x : sum) {
                s.append(Character.forDigit((x >> 4) & 0xf, 16)).append(Character.forDigit(x & 0xf, 16));
            }
            return s.toString();
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("every JVM has SHA-256", e);
        }
    }

    /** Whether digest is a well-formed sha256:&lt;64 lowercase hex&gt;. */
    static boolean wellFormedDigest(String digest) {
        if (digest == null || !digest.startsWith("sha256:") || digest.length() != 7 + 64) {
            return false;
        }
        for (byte c : digest.substring(7).getBytes(StandardCharsets.US_ASCII)) {
            if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
                return false;
            }
        }
        return true;
    }
}
