package dev.hotload;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Test;

/**
 * The Java SDK measured the way every app SDK is (docs/benchmarks.md, "App SDKs"), with the
 * conformance taggers; prints one JSON line. Not part of {@code mvn test} (surefire's default
 * includes end in Test/Tests/TestCase); run it by name from sdk/java:
 * {@code mvn -q -B -Dmaven.repo.local=$HOME/.cache/hotload/m2 test -Dtest=SwapBench}.
 *
 * <ul>
 *   <li>call_ns: ns per {@code host.call} of tagger-v1 with a 5-byte input, one thread, after
 *       warm-up (median of the rounds' means);
 *   <li>swap_ns: {@link Loaded#swap()}, the one volatile store of the new revision;
 *   <li>load_cached_ms: {@link Loaded#total()} of alternating v1/v2 loads, each a cache hit
 *       (digest, the module this host compiled before, kept in memory: no parse, no class
 *       defined; 4 instances, self-check, state hand-over, swap);
 *   <li>p99 of single calls, steady and while another thread swaps v1/v2 every ~10 ms.
 * </ul>
 */
class SwapBench {
    private static final String PLUGIN = "tagger";
    private static final int WARMUP = 50_000;
    private static final int ROUNDS = 7;
    private static final int ROUND_CALLS = 100_000;
    private static final int LOADS = 100;
    private static final int P99_CALLS = 20_000;
    private static final long CALL_SPACING_NS = 50_000;
    private static final long SWAP_EVERY_MS = 10;
    private static final byte[] INPUT = "hello".getBytes(java.nio.charset.StandardCharsets.UTF_8);

    @Test
    void bench() throws Exception {
        Path plugins = Path.of(System.getProperty("hotload.conformance", "../conformance")).resolve("plugins");
        List<LoadRequest> reqs = new ArrayList<>();
        for (String name : List.of("tagger-v1", "tagger-v2")) {
            byte[] wasm = Files.readAllBytes(plugins.resolve(name + ".wasm"));
            reqs.add(new LoadRequest(PLUGIN, name, Abi.digest(wasm), new byte[0], wasm));
        }
        Path cacheDir = Files.createTempDirectory("hotload-bench-");
        try (PluginHost host = new PluginHost(HostConfig.builder().cacheDir(cacheDir).build())) {
            // The first load of each compiles and fills the cache; the timed ones all hit it.
            host.load(reqs.get(0));
            host.load(reqs.get(1));
            long[] swaps = new long[LOADS];
            long[] totals = new long[LOADS];
            int hits = 0;
            for (int i = 0; i < LOADS; i++) {
                Loaded l = host.load(reqs.get(i % 2));
                hits += "hit".equals(l.cache()) ? 1 : 0;
                swaps[i] = l.swap().toNanos();
                totals[i] = l.total().toNanos();
            }
            host.load(reqs.get(0)); // LOADS is even: v2 serves now; v1 for the rest.

            for (int i = 0; i < WARMUP; i++) {
                host.call(PLUGIN, INPUT);
            }
            long[] means = new long[ROUNDS];
            for (int r = 0; r < ROUNDS; r++) {
                long t = System.nanoTime();
                for (int i = 0; i < ROUND_CALLS; i++) {
                    host.call(PLUGIN, INPUT);
                }
                means[r] = (System.nanoTime() - t) / ROUND_CALLS;
            }

            long[] steady = latencies(host);
            AtomicBoolean stop = new AtomicBoolean();
            AtomicInteger swapped = new AtomicInteger();
            AtomicReference<Exception> failure = new AtomicReference<>();
            Thread swapper = new Thread(() -> {
                try {
                    for (int i = 1; !stop.get(); i++) {
                        Thread.sleep(SWAP_EVERY_MS);
                        host.load(reqs.get(i % 2));
                        swapped.incrementAndGet();
                    }
                } catch (Exception e) {
                    failure.set(e);
                }
            }, "swapper");
            swapper.start();
            long[] during;
            try {
                during = latencies(host);
            } finally {
                stop.set(true);
                swapper.join();
            }
            if (failure.get() != null) {
                throw failure.get();
            }

            long p99Steady = pct(steady, 99);
            long p99Swaps = pct(during, 99);
            System.out.println(String.format(Locale.ROOT,
                    "{\"sdk\":\"java\",\"runtime\":\"Chicory (compiler), Java %s\",\"call_ns\":%d,\"call_ns_rounds\":%s,"
                            + "\"swap_ns_median\":%d,\"swap_ns_max\":%d,\"load_cached_ms_median\":%.3f,\"load_cached_ms_p90\":%.3f,"
                            + "\"loads\":%d,\"cache_hits\":%d,\"calls\":%d,\"p50_steady_us\":%.3f,\"p99_steady_us\":%.3f,"
                            + "\"p50_swaps_us\":%.3f,\"p99_swaps_us\":%.3f,\"swaps_during\":%d,\"p99_ratio\":%.3f}",
                    Runtime.version().feature(), pct(means, 50),
                    Arrays.stream(means).mapToObj(Long::toString).collect(Collectors.joining(",", "[", "]")),
                    pct(swaps, 50), Arrays.stream(swaps).max().orElse(0), pct(totals, 50) / 1e6, pct(totals, 90) / 1e6,
                    LOADS, hits, P99_CALLS, pct(steady, 50) / 1e3, p99Steady / 1e3, pct(during, 50) / 1e3, p99Swaps / 1e3,
                    swapped.get(), (double) p99Swaps / p99Steady));
        } finally {
            try (var files = Files.list(cacheDir)) {
                for (Path f : files.collect(Collectors.toList())) {
                    Files.delete(f);
                }
            }
            Files.delete(cacheDir);
        }
    }

    /** Times P99_CALLS single calls, one every CALL_SPACING_NS (spinning until it is due). */
    private static long[] latencies(PluginHost host) throws Exception {
        long[] lat = new long[P99_CALLS];
        long next = System.nanoTime();
        for (int i = 0; i < P99_CALLS; i++) {
            while (System.nanoTime() < next) {
                Thread.onSpinWait();
            }
            next += CALL_SPACING_NS;
            long t = System.nanoTime();
            host.call(PLUGIN, INPUT);
            lat[i] = System.nanoTime() - t;
        }
        return lat;
    }

    private static long pct(long[] xs, int p) {
        List<Long> s = new ArrayList<>(Arrays.stream(xs).boxed().collect(Collectors.toList()));
        Collections.sort(s);
        return s.get(Math.min(s.size() - 1, s.size() * p / 100));
    }
}
