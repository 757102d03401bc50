package dev.hotload;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.Map;

/** Shared helpers of the conformance runners: files, host settings, expectations. */
final class Conformance {
    private Conformance() {}

    static Path dir() {
        String d = System.getProperty("hotload.conformance");
        return Path.of(d != null ? d : "../conformance").toAbsolutePath().normalize();
    }

    static Path plugin(String file) {
        return dir().resolve("plugins").resolve(file);
    }

    static byte[] pluginBytes(String file) {
        try {
            return Files.readAllBytes(plugin(file));
        } catch (IOException e) {
            throw new UncheckedIOException("conformance plugin " + file + " (make conformance-plugins builds it)", e);
        }
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> obj(Object o) {
        return (Map<String, Object>) o;
    }

    @SuppressWarnings("unchecked")
    static List<Object> list(Object o) {
        return (List<Object>) o;
    }

    static Map<String, Object> cases() throws Exception {
        return obj(Json.parse(Files.readString(dir().resolve("cases.json"))));
    }

    /** A hook recorder writing events as cases.json spells them. */
    static final class Recorder implements Hooks {
        private final List<String> events = new ArrayList<>();

        @Override
        public synchronized void beforeUnload(UnloadEvent e) {
            events.add("before_unload " + e.plugin() + " " + e.revision() + " next=" + e.next());
        }

        @Override
        public synchronized void afterLoad(LoadEvent e) {
            events.add("after_load " + e.plugin() + " " + e.revision() + " previous=" + e.previous());
        }

        @Override
        public synchronized void loadFailed(String plugin, String revision, LoadException error) {
            events.add("load_failed " + plugin + " " + revision + " " + error.kindLabel());
        }

        synchronized List<String> take() {
            List<String> out = new ArrayList<>(events);
            events.clear();
            return out;
        }
    }

    static HostConfig hostConfig(Map<String, Object> base, Map<String, Object> overrides, Hooks hooks) {
        return hostConfig(base, overrides, hooks, true);
    }

    static HostConfig hostConfig(Map<String, Object> base, Map<String, Object> overrides, Hooks hooks, boolean compile) {
        HostConfig.Builder b = HostConfig.builder().hooks(hooks).compile(compile);
        List<Map<String, Object>> layers = new ArrayList<>();
        layers.add(base);
        layers.add(overrides);
        for (Map<String, Object> m : layers) {
            if (m == null) {
                continue;
            }
            for (Map.Entry<String, Object> e : m.entrySet()) {
                long v = ((Json.Num) e.getValue()).longValue();
                switch (e.getKey()) {
                    case "max_memory_bytes":
                        b.maxMemoryBytes(v);
                        break;
                    case "call_timeout_ms":
                        b.callTimeout(Duration.ofMillis(v));
                        break;
                    case "instances_per_revision":
                        b.instancesPerRevision((int) v);
                        break;
                    case "checkout_timeout_ms":
                        b.checkoutTimeout(Duration.ofMillis(v));
                        break;
                    case "max_plugins":
                        b.maxPlugins((int) v);
                        break;
                    default:
                        fail("unknown host setting " + e.getKey());
                }
            }
        }
        return b.build();
    }

    static byte[] input(Map<String, Object> op) {
        if (op.containsKey("input_b64")) {
            return Base64.getDecoder().decode((String) op.get("input_b64"));
        }
        return ((String) op.getOrDefault("input", "")).getBytes(StandardCharsets.UTF_8);
    }

    /** Checks a call's outcome (output or error) against expect. */
    static void checkCall(String what, Map<String, Object> expect, byte[] out, HotloadException err) {
        if (expect == null) {
            return;
        }
        if (expect.containsKey("error")) {
            assertNotNull(err, what + ": expected an error, got output " + (out == null ? null : new String(out, StandardCharsets.UTF_8)));
            checkError(what, obj(expect.get("error")), err);
            return;
        }
        if (err != null) {
            fail(what + ": unexpected error: " + err.getMessage());
        }
        if (expect.containsKey("output")) {
            assertEquals(expect.get("output"), new String(out, StandardCharsets.UTF_8), what);
        }
        if (expect.containsKey("output_b64")) {
            assertArrayEquals(Base64.getDecoder().decode((String) expect.get("output_b64")), out, what);
        }
    }

    static void checkError(String what, Map<String, Object> want, HotloadException err) {
        Object kind = want.get("kind");
        if (kind instanceof String) {
            assertEquals(kind, err.kindLabel(), what + ": kind of " + err.getMessage());
        } else if (kind instanceof List) {
            assertTrue(list(kind).contains(err.kindLabel()), what + ": kind " + err.kindLabel() + " not in " + kind);
        }
        if (want.containsKey("fault")) {
            Failure f = err.failure();
            assertNotNull(f, what + ": no guest failure in " + err.getMessage());
            assertEquals(want.get("fault"), f.kind().label(), what + ": fault of " + err.getMessage());
        }
        if (want.containsKey("reason")) {
            for (Object sub : list(want.get("reason"))) {
                assertTrue(err.getMessage().contains((String) sub), what + ": reason " + Json.quote(err.getMessage()) + " lacks " + Json.quote((String) sub));
            }
        }
    }
}
