package dev.hotload;

import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * What one plugin revision did since the previous {@link PluginHost#takeHealth()}: an entry of
 * the protocol's {@code health} message (docs/protocol.md), counted as hotload-host counts it
 * (plugin-sidecar/protocol/src/health.rs).
 *
 * <pre>
 *   trap     the guest trapped, answered out of range, or the runtime stopped it
 *   timeout  the call ran past the call timeout
 *   memory   the guest grew past the memory limit
 *   failed   no instance free within the checkout timeout, none could be re-created, the
 *            calling thread was interrupted, or the app marked a returned call failed
 * </pre>
 *
 * @param plugin the plugin slot name
 * @param revision the revision that served the calls
 * @param calls calls made, failed ones included
 * @param trap calls where the plugin trapped
 * @param timeout calls that ran out of time
 * @param memory calls that hit the memory limit
 * @param failed calls that failed otherwise or that the app marked failed
 * @param latencyUs calls per latency bucket: {@link #LATENCY_BUCKETS} counts
 */
public record PluginHealth(String plugin, String revision, long calls, long trap, long timeout, long memory, long failed,
        List<Long> latencyUs) {

    /** How often an {@link AppClient} sends the counts while calls happen, in milliseconds. */
    public static final long INTERVAL_MS = 1000;

    /** Upper bounds (µs) of every latency bucket but the last: 1-2-5 steps from 10 µs to 10 s. */
    public static final List<Long> LATENCY_BOUNDS_US = List.of(10L, 20L, 50L, 100L, 200L, 500L, 1_000L, 2_000L, 5_000L, 10_000L,
            20_000L, 50_000L, 100_000L, 200_000L, 500_000L, 1_000_000L, 2_000_000L, 5_000_000L, 10_000_000L);

    /** Buckets in a report: one per bound, one for slower calls. */
    public static final int LATENCY_BUCKETS = LATENCY_BOUNDS_US.size() + 1;

    private static final long[] BOUNDS = LATENCY_BOUNDS_US.stream().mapToLong(Long::longValue).toArray();

    /** A report copies its buckets. */
    public PluginHealth {
        latencyUs = List.copyOf(latencyUs);
    }

    /** The bucket of a call of {@code micros} whole µs: the first bound at least that, else the last. */
    public static int latencyBucket(long micros) {
        int i = Arrays.binarySearch(BOUNDS, Math.max(0, micros));
        return i >= 0 ? i : -i - 1;
    }

    /** Every failed call, whatever the kind. */
    public long errors() {
        return trap + timeout + memory + failed;
    }

    /** The entry as the protocol writes it. */
    Map<String, Object> toMessage() {
        Map<String, Object> errors = new LinkedHashMap<>();
        errors.put("trap", trap);
        errors.put("timeout", timeout);
        errors.put("memory", memory);
        errors.put("failed", failed);
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("plugin", plugin);
        m.put("revision", revision);
        m.put("calls", calls);
        m.put("errors", errors);
        m.put("latency_us", latencyUs);
        return m;
    }
}
