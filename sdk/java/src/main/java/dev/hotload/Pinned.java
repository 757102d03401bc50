package dev.hotload;

import java.lang.ref.Cleaner;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * One revision of a plugin held for the length of a request: every call through it runs on
 * that revision, whatever is loaded or unloaded meanwhile. The swap does not wait for it; the
 * revision's instances stay alive until the last pin on it is closed, so pin for a request,
 * not for a connection. Use it in try-with-resources. Safe for concurrent use.
 */
public final class Pinned implements AutoCloseable {
    private static final Cleaner CLEANER = Cleaner.create();

    private final Revision rev;
    private final AtomicBoolean released;
    private final Cleaner.Cleanable cleanable;

    Pinned(Revision rev) {
        this.rev = rev;
        AtomicBoolean flag = new AtomicBoolean();
        this.released = flag;
        // A pin dropped without close is released when the garbage collector finds it.
        this.cleanable = CLEANER.register(this, () -> {
            if (!flag.getAndSet(true)) {
                rev.release();
            }
        });
    }

    /** Calls the plugin's handle with input on the pinned revision. */
    public byte[] call(byte[] input) throws CallException, InterruptedException {
        if (released.get()) {
            throw new IllegalStateException("hotload: call through a released pin");
        }
        try {
            return rev.call(input);
        } finally {
            java.lang.ref.Reference.reachabilityFence(this);
        }
    }

    /**
     * Counts one call through this pin that returned as failed (its answer was unusable, say)
     * on the pinned revision. Does nothing after close.
     */
    public void markFailed() {
        if (!released.get()) {
            rev.markFailed();
        }
    }

    /** The pinned revision's identity. */
    public RevisionId revision() {
        return rev.id;
    }

    /** Lets the revision go; closing again does nothing. */
    @Override
    public void close() {
        cleanable.clean();
    }
}
