package dev.hotload;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;

/** Health counts: the bucket function, busy calls, the report's JSON, concurrent calls and takes. */
class HealthTest {
    private static void load(PluginHost host, String plugin, String revision, String file) throws Exception {
        byte[] wasm = Conformance.pluginBytes(file);
        host.load(new LoadRequest(plugin, revision, Abi.digest(wasm), new byte[0], wasm));
    }

    private static long sum(List<Long> xs) {
        return xs.stream().mapToLong(Long::longValue).sum();
    }

    @Test
    void latencyBucketsFollowTheDocumentedBounds() {
        long[][] cases = {{0, 0}, {10, 0}, {11, 1}, {20, 1}, {21, 2}, {1000, 6}, {1001, 7}, {3000, 8},
            {1_000_000, 15}, {10_000_000, 18}, {10_000_001, 19}, {3_600_000_000L, 19}, {-5, 0}};
        for (long[] c : cases) {
            assertEquals(c[1], PluginHealth.latencyBucket(c[0]), c[0] + " µs");
        }
        for (int i = 0; i < PluginHealth.LATENCY_BOUNDS_US.size(); i++) {
            assertEquals(i, PluginHealth.latencyBucket(PluginHealth.LATENCY_BOUNDS_US.get(i)), "exactly a bound");
        }
        assertEquals(20, PluginHealth.LATENCY_BUCKETS);
    }

    @Test
    void aBusyCallCountsAsFailedAndTheOneHoldingTheInstanceAsTimeout() throws Exception {
        HostConfig cfg = HostConfig.builder().instancesPerRevision(1).callTimeout(Duration.ofMillis(400))
                .checkoutTimeout(Duration.ofMillis(100)).build();
        try (PluginHost host = new PluginHost(cfg)) {
            load(host, "slow", "r1", "handle-loop.wasm");
            AtomicReference<CallException> held = new AtomicReference<>();
            Thread t = new Thread(() -> {
                try {
                    host.call("slow", new byte[] {1});
                } catch (CallException e) {
                    held.set(e);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            });
            t.start();
            Thread.sleep(50);
            try {
                host.call("slow", new byte[] {2});
                fail("the second call found an instance");
            } catch (CallException e) {
                assertEquals(CallException.Kind.BUSY, e.kind(), e.getMessage());
            }
            t.join();
            assertEquals(Failure.Kind.TIMEOUT, held.get().failure().kind());
            List<PluginHealth> got = host.takeHealth();
            assertEquals(1, got.size());
            PluginHealth h = got.get(0);
            assertEquals(List.of(2L, 0L, 1L, 0L, 1L), List.of(h.calls(), h.trap(), h.timeout(), h.memory(), h.failed()));
            assertEquals(2, sum(h.latencyUs().subList(PluginHealth.latencyBucket(100_000), 20)), "both took 100 ms or more");
            assertEquals(List.of(), host.takeHealth(), "drained");
        }
    }

    @Test
    void healthIsTheProtocolsJson() throws Exception {
        try (PluginHost host = new PluginHost(HostConfig.builder().instancesPerRevision(1).build())) {
            load(host, "auth", "r2", "tagger-v1.wasm");
            host.call("auth", "x".getBytes(StandardCharsets.UTF_8));
            Pinned pin = host.pin("auth");
            pin.markFailed();
            pin.close();
            pin.markFailed(); // after close: nothing
            String line = new String(Protocol.health(host.takeHealth()), StandardCharsets.UTF_8);
            assertTrue(line.startsWith("{\"type\":\"health\",\"plugins\":[{\"plugin\":\"auth\",\"revision\":\"r2\",\"calls\":1,"
                    + "\"errors\":{\"trap\":0,\"timeout\":0,\"memory\":0,\"failed\":1},\"latency_us\":["), line);
            Object buckets = Conformance.obj(Conformance.list(Conformance.obj(Json.parse(line.trim())).get("plugins")).get(0)).get("latency_us");
            assertEquals(20, Conformance.list(buckets).size(), line);
        }
    }

    /**
     * Calls with swaps and takes at once, then calls with marks and takes at once: the reports
     * add up to every call and every mark, and none has more failed calls than calls.
     */
    @Test
    void countsAddUpUnderConcurrentCallsSwapsAndTakes() throws Exception {
        try (PluginHost host = new PluginHost(HostConfig.builder().instancesPerRevision(2).callTimeout(Duration.ofSeconds(5)).build())) {
            load(host, "auth", "r0", "tagger-v1.wasm");
            List<PluginHealth> reports = new ArrayList<>();
            int callers = 4;
            int perCaller = 100;
            for (boolean mark : new boolean[] {false, true}) {
                List<Thread> threads = new ArrayList<>();
                AtomicReference<Exception> failure = new AtomicReference<>();
                for (int c = 0; c < callers; c++) {
                    Thread t = new Thread(() -> {
                        try {
                            for (int i = 0; i < perCaller; i++) {
                                host.call("auth", new byte[] {'x'});
                                if (mark && i % 10 == 0) {
                                    host.markFailed("auth");
                                }
                            }
                        } catch (Exception e) {
                            failure.set(e);
                        }
                    });
                    t.start();
                    threads.add(t);
                }
                int n = 0;
                while (threads.stream().anyMatch(Thread::isAlive)) {
                    if (!mark) {
                        load(host, "auth", "r" + (++n % 3), "tagger-v1.wasm");
                    }
                    reports.addAll(host.takeHealth());
                }
                for (Thread t : threads) {
                    t.join();
                }
                if (failure.get() != null) {
                    throw failure.get();
                }
            }
            reports.addAll(host.takeHealth());
            for (PluginHealth r : reports) {
                assertTrue(r.errors() <= r.calls(), r.toString());
                assertEquals(r.calls(), sum(r.latencyUs()), r.toString());
            }
            assertEquals(2L * callers * perCaller, reports.stream().mapToLong(PluginHealth::calls).sum());
            assertEquals((long) callers * perCaller / 10, reports.stream().mapToLong(PluginHealth::failed).sum());
        }
    }
}
