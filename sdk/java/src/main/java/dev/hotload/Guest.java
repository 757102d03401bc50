package dev.hotload;

import com.dylibso.chicory.runtime.ChicoryInterruptedException;
import com.dylibso.chicory.runtime.TrapException;
import com.dylibso.chicory.runtime.WasmRuntimeException;
import com.dylibso.chicory.wasi.WasiExitException;
import java.time.Duration;

/**
 * Runs guest code under a deadline, on the calling thread. Chicory stops a guest only when its
 * thread is interrupted (compiled code checks at calls and loop back-edges, interpreted code at
 * every instruction through {@link PluginInstance}'s listener, WASI's sleep while it waits), so
 * the {@link Watchdog} interrupts the caller at the deadline and the interrupt is cleared when
 * the operation returns. The instance a timed-out operation ran on is discarded by the caller,
 * never lent again.
 *
 * <p>Why not a worker thread per operation: handing every call to another thread and waiting
 * for it costs two thread wake-ups per call, which on a busy machine is most of a call's time
 * and nearly all of its tail.
 */
final class Guest {
    private Guest() {}

    /** A guest operation; it throws {@link Fault} for an ABI-level failure it detects itself. */
    interface Op<T> {
        T run() throws Fault;
    }

    /** A guest operation that failed, with how. */
    static final class Fault extends Exception {
        private static final long serialVersionUID = 1L;
        final transient Failure failure;

        Fault(Failure failure) {
            super(failure.toString(), null, false, false);
            this.failure = failure;
        }
    }

    /**
     * Runs op on this thread, stopping it at the deadline. A thread already interrupted (the
     * app canceling) fails at once, {@code canceled}, and stays interrupted. An operation
     * started inside another one runs under the outer deadline.
     */
    static <T> T run(Duration timeout, Op<T> op) throws Fault {
        Watchdog.Watch watch = Watchdog.current();
        if (watch.busy()) {
            return runUnarmed(op);
        }
        if (Thread.currentThread().isInterrupted()) {
            throw new Fault(Failure.canceled());
        }
        long deadline = watch.arm(timeout);
        T result = null;
        Throwable thrown = null;
        boolean fired;
        try {
            result = op.run();
        } catch (Throwable t) { // every guest failure (StackOverflowError too) becomes a Failure
            thrown = t;
        } finally {
            fired = watch.disarm(deadline);
        }
        if (thrown == null) {
            return result; // even one that completed just as its deadline passed
        }
        if (fired) {
            throw new Fault(Failure.timeout());
        }
        if (thrown instanceof Fault) {
            throw (Fault) thrown;
        }
        if (stoppedByInterrupt(thrown)) {
            // The app's interrupt, since the deadline did not fire. WASI's sleep clears the
            // thread's interrupt status when it stops on one, so set it again for the app.
            Thread.currentThread().interrupt();
            throw new Fault(Failure.canceled());
        }
        throw new Fault(classify(thrown));
    }

    /**
     * Whether the guest stopped because its thread was interrupted: Chicory's own interrupt
     * check, or host code (WASI's sleep) that caught an {@link InterruptedException} and wrapped
     * it. Pure: looks only at the cause chain.
     */
    static boolean stoppedByInterrupt(Throwable t) {
        for (Throwable c = t; c != null; c = c.getCause()) {
            if (c instanceof ChicoryInterruptedException || c instanceof InterruptedException) {
                return true;
            }
        }
        return false;
    }

    private static <T> T runUnarmed(Op<T> op) throws Fault {
        try {
            return op.run();
        } catch (Fault f) {
            throw f;
        } catch (Throwable t) {
            throw new Fault(classify(t));
        }
    }

    /** Turns what a guest threw into a Failure. Pure: looks only at the cause chain. */
    static Failure classify(Throwable t) {
        for (Throwable c = t; c != null; c = c.getCause()) {
            if (c instanceof Fault) {
                return ((Fault) c).failure;
            }
            if (c instanceof LimitedMemory.MemoryLimitExceeded) {
                LimitedMemory.MemoryLimitExceeded m = (LimitedMemory.MemoryLimitExceeded) c;
                return Failure.memoryLimit(m.requested, m.limit);
            }
        }
        for (Throwable c = t; c != null; c = c.getCause()) {
            if (c instanceof TrapException || c instanceof WasmRuntimeException) {
                return Failure.trap(firstLine(c.getMessage()));
            }
            if (c instanceof StackOverflowError) {
                return Failure.trap("call stack exhausted");
            }
        }
        if (t instanceof ChicoryInterruptedException) {
            return Failure.canceled();
        }
        if (t instanceof StackOverflowError) {
            return Failure.trap("call stack exhausted");
        }
        if (t instanceof WasiExitException) {
            return Failure.other("plugin exited with code " + ((WasiExitException) t).exitCode());
        }
        if (t instanceof TrapException || t instanceof WasmRuntimeException) {
            return Failure.trap(firstLine(t.getMessage()));
        }
        if (t instanceof ArithmeticException || t instanceof IndexOutOfBoundsException) {
            return Failure.trap(firstLine(t.toString()));
        }
        return Failure.other(firstLine(String.valueOf(t)));
    }

    private static String firstLine(String s) {
        if (s == null) {
            return "";
        }
        int i = s.indexOf('\n');
        return i < 0 ? s : s.substring(0, i);
    }
}
