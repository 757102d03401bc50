package dev.hotload;

import java.time.Duration;
import java.util.Locale;

/**
 * A successful load. {@code swapped} is false when the request named the revision already
 * serving (nothing was done). {@code stateBytes} is the snapshot size handed over, or -1 when
 * no state moved. {@code cache} says where the compiled code came from: {@code hit} (this host
 * loaded the module before and kept it in memory, or found it in the cache directory), {@code
 * miss} of the cache directory, or {@code uncached}.
 */
public record Loaded(String revision, boolean swapped, boolean selfChecked, int stateBytes, String cache, Duration compile, Duration total, Duration swap) {
    /** The one-line summary an app sends with {@code loaded}. */
    public String health() {
        if (!swapped) {
            return "already serving";
        }
        String state = stateBytes < 0 ? "none" : "restored " + stateBytes + " bytes";
        return String.format(Locale.ROOT, "self-check %s; state %s; cache %s; load %.1f ms; swap %.1f µs",
                selfChecked ? "passed" : "absent", state, cache, total.toNanos() / 1e6, swap.toNanos() / 1e3);
    }
}
