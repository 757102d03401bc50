package dev.hotload;

import com.dylibso.chicory.runtime.ChicoryInterruptedException;
import com.dylibso.chicory.runtime.TrapException;
import com.dylibso.chicory.runtime.WasmRuntimeException;
import com.dylibso.chicory.wasi.WasiExitException;
import java.time.Duration;
import java.util.concurrent.CancellationException;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.FutureTask;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * Runs guest code under a deadline. Chicory runs a guest on the calling thread and stops it
 * only when that thread is interrupted (its interpreter checks, and so does WASI's sleep), so
 * every guest operation runs on a pooled worker thread while the caller waits for it; at the
 * deadline the caller interrupts the worker, waits for it to stop, and reports a timeout. The
 * instance it ran on is discarded by the caller, never lent again.
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

    private static final AtomicInteger THREADS = new AtomicInteger();
    private static final ExecutorService EXEC = Executors.newCachedThreadPool(r -> {
        Thread t = new Thread(r, "hotload-guest-" + THREADS.incrementAndGet());
        t.setDaemon(true);
        return t;
    });
    /** How long an interrupted guest may take to notice before the caller gives up waiting. */
    private static final long STOP_WAIT_MS = 5_000;

    /** Runs op on a worker thread, interrupting it at the deadline. */
    static <T> T run(Duration timeout, Op<T> op) throws Fault {
        CountDownLatch done = new CountDownLatch(1);
        FutureTask<T> task = new FutureTask<>(() -> {
            try {
                return op.run();
            } finally {
                done.countDown();
            }
        });
        EXEC.execute(task);
        try {
            return task.get(timeout.toNanos(), TimeUnit.NANOSECONDS);
        } catch (TimeoutException e) {
            if (task.cancel(true)) {
                await(done);
                throw new Fault(Failure.timeout());
            }
            return outcome(task);
        } catch (InterruptedException e) {
            task.cancel(true);
            await(done);
            Thread.currentThread().interrupt();
            throw new Fault(Failure.canceled());
        } catch (ExecutionException e) {
            throw new Fault(classify(e.getCause()));
        }
    }

    /** The result of a task that completed just as its deadline passed. */
    private static <T> T outcome(FutureTask<T> task) throws Fault {
        try {
            return task.get();
        } catch (ExecutionException e) {
            throw new Fault(classify(e.getCause()));
        } catch (InterruptedException | CancellationException e) {
            throw new Fault(Failure.timeout());
        }
    }

    private static void await(CountDownLatch done) {
        try {
            done.await(STOP_WAIT_MS, TimeUnit.MILLISECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
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
