package dev.hotload;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * A host's call counts per (plugin, revision), until {@link #take()} drains them. Every call
 * counts on the revision it started on; a revision that was swapped out keeps its counts until
 * they are taken. One lock per revision: a report is consistent (its buckets add up to its
 * calls, its failed calls never exceed them), which independent atomic counters cannot promise
 * while calls race a take.
 */
final class HealthTable {
    /** How a call's outcome counts. */
    enum Outcome { OK, TRAP, TIMEOUT, MEMORY, FAILED }

    /** How a call's error counts, as hotload-host classifies it. Pure. */
    static Outcome outcomeOf(Throwable err) {
        if (err == null) {
            return Outcome.OK;
        }
        if (!(err instanceof CallException ce) || ce.kind() != CallException.Kind.HANDLE || ce.failure() == null) {
            return Outcome.FAILED; // busy, re-instantiation failed, interrupted
        }
        return switch (ce.failure().kind()) {
            case TIMEOUT -> Outcome.TIMEOUT;
            case MEMORY_LIMIT -> Outcome.MEMORY;
            case TRAP, BAD_RANGE, OTHER -> Outcome.TRAP;
            default -> Outcome.FAILED;
        };
    }

    /** One (plugin, revision)'s counts, shared by every Revision object of that pair. */
    static final class Entry {
        final String plugin;
        final String revision;
        /** Live Revision objects counting here (under the table's lock). */
        int users;
        private long calls;
        private long trap;
        private long timeout;
        private long memory;
        private long failed;
        private final long[] latency = new long[PluginHealth.LATENCY_BUCKETS];

        Entry(String plugin, String revision) {
            this.plugin = plugin;
            this.revision = revision;
        }

        synchronized void record(long nanos, Outcome outcome) {
            calls++;
            switch (outcome) {
                case TRAP -> trap++;
                case TIMEOUT -> timeout++;
                case MEMORY -> memory++;
                case FAILED -> failed++;
                case OK -> { }
            }
            latency[PluginHealth.latencyBucket(nanos / 1000)]++;
        }

        synchronized void markFailed() {
            failed++;
        }

        /**
         * Drains the counts. A report never has more failed calls than calls (the sidecar
         * refuses one): marks beyond that wait for the next report with calls.
         */
        synchronized PluginHealth take() {
            long room = Math.max(0, calls - trap - timeout - memory);
            long reported = Math.min(failed, room);
            List<Long> buckets = new ArrayList<>(latency.length);
            for (int i = 0; i < latency.length; i++) {
                buckets.add(latency[i]);
                latency[i] = 0;
            }
            PluginHealth out = new PluginHealth(plugin, revision, calls, trap, timeout, memory, reported, buckets);
            calls = trap = timeout = memory = 0;
            failed -= reported;
            return out;
        }

        synchronized boolean pending() {
            return failed > 0;
        }
    }

    private final Map<List<String>, Entry> entries = new HashMap<>();

    /** The entry a revision that starts serving counts in; {@link #leave} when it is dropped. */
    synchronized Entry join(String plugin, String revision) {
        Entry e = entries.computeIfAbsent(List.of(plugin, revision), k -> new Entry(plugin, revision));
        e.users++;
        return e;
    }

    synchronized void leave(Entry e) {
        e.users--;
    }

    /** Drains every entry (those with calls, sorted); entries of dropped revisions go. */
    synchronized List<PluginHealth> take() {
        List<PluginHealth> out = new ArrayList<>();
        var it = entries.values().iterator();
        while (it.hasNext()) {
            Entry e = it.next();
            PluginHealth h = e.take();
            if (h.calls() > 0) {
                out.add(h);
            }
            if (e.users == 0 && !e.pending()) {
                it.remove();
            }
        }
        out.sort(Comparator.comparing(PluginHealth::plugin).thenComparing(PluginHealth::revision));
        return out;
    }
}
