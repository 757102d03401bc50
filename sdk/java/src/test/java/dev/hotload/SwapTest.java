package dev.hotload;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;

/** Atomic swaps under load: no call fails, no response mixes two revisions. */
class SwapTest {
    /** Splits "v01:bodyv01:" into its tag, checking both tags agree; null when mixed. */
    static String tagOf(String out, String input) {
        if (out.length() < 8) {
            return null;
        }
        String head = out.substring(0, 4);
        String tail = out.substring(out.length() - 4);
        String body = out.substring(4, out.length() - 4);
        return head.equals(tail) && body.equals(input) ? head.substring(0, 3) : null;
    }

    @Test
    void hundredSwapsUnderConcurrentCallsAndPinsFailNothing() throws Exception {
        byte[] v1 = Conformance.pluginBytes("tagger-v1.wasm");
        byte[] v2 = Conformance.pluginBytes("tagger-v2.wasm");
        HostConfig cfg = HostConfig.builder().callTimeout(Duration.ofSeconds(2)).instancesPerRevision(2).build();
        try (PluginHost host = new PluginHost(cfg)) {
            host.load(new LoadRequest("auth", "r0", Abi.digest(v1), null, v1));
            AtomicBoolean stop = new AtomicBoolean();
            AtomicLong calls = new AtomicLong();
            AtomicLong failed = new AtomicLong();
            AtomicReference<String> firstErr = new AtomicReference<>();
            ConcurrentHashMap<String, AtomicLong> perTag = new ConcurrentHashMap<>();
            List<Thread> callers = new ArrayList<>();
            for (int t = 0; t < 3; t++) {
                final int id = t;
                Thread th = new Thread(() -> {
                    for (int i = 0; !stop.get(); i++) {
                        String in = "caller" + id + "-" + i;
                        String err = null;
                        try {
                            if (id == 2) {
                                // A pinned request: both calls on one revision.
                                try (Pinned p = host.pin("auth")) {
                                    String a = tagOf(new String(p.call(in.getBytes(StandardCharsets.UTF_8)), StandardCharsets.UTF_8), in);
                                    String b = tagOf(new String(p.call(in.getBytes(StandardCharsets.UTF_8)), StandardCharsets.UTF_8), in);
                                    if (a == null || !a.equals(b)) {
                                        err = "pinned calls answered " + a + " then " + b;
                                    }
                                }
                            } else {
                                String out = new String(host.call("auth", in.getBytes(StandardCharsets.UTF_8)), StandardCharsets.UTF_8);
                                String tag = tagOf(out, in);
                                if (tag == null) {
                                    err = "mixed response " + out;
                                } else {
                                    perTag.computeIfAbsent(tag, k -> new AtomicLong()).incrementAndGet();
                                }
                            }
                        } catch (Exception e) {
                            err = e.toString();
                        }
                        calls.incrementAndGet();
                        if (err != null) {
                            failed.incrementAndGet();
                            firstErr.compareAndSet(null, err);
                        }
                    }
                }, "caller-" + t);
                th.start();
                callers.add(th);
            }
            for (int n = 1; n <= 100; n++) {
                byte[] w = n % 2 == 0 ? v1 : v2;
                Loaded l = host.load(new LoadRequest("auth", "s" + n, Abi.digest(w), null, w));
                assertTrue(l.swapped(), "swap " + n);
                Thread.sleep(2);
            }
            stop.set(true);
            for (Thread th : callers) {
                th.join();
            }
            assertEquals(0, failed.get(), "failed or mixed calls of " + calls.get() + ", first: " + firstErr.get());
            assertTrue(perTag.containsKey("v01") && perTag.containsKey("v02"), "both revisions served: " + perTag);
            assertEquals("s100", host.serving("auth").orElseThrow().revision());
        }
    }

    @Test
    void aCallInFlightFinishesOnTheOldRevision() throws Exception {
        byte[] v1 = Conformance.pluginBytes("tagger-v1.wasm");
        byte[] v2 = Conformance.pluginBytes("tagger-v2.wasm");
        try (PluginHost host = new PluginHost(HostConfig.builder().instancesPerRevision(1).build())) {
            host.load(new LoadRequest("auth", "r1", Abi.digest(v1), null, v1));
            try (Pinned p = host.pin("auth")) {
                host.load(new LoadRequest("auth", "r2", Abi.digest(v2), null, v2));
                assertEquals("v01:xv01:", new String(p.call("x".getBytes(StandardCharsets.UTF_8)), StandardCharsets.UTF_8));
                assertEquals("v02:xv02:", new String(host.call("auth", "x".getBytes(StandardCharsets.UTF_8)), StandardCharsets.UTF_8));
            }
        }
    }
}
