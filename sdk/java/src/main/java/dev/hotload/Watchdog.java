package dev.hotload;

import java.time.Duration;
import java.util.Iterator;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.LockSupport;

/**
 * Interrupts a thread whose guest call ran past its deadline, so that guest code can run on
 * the caller's own thread. Chicory's compiled code checks the running thread's interrupt status
 * at calls and loop back-edges, and interpreted code before every instruction (a listener
 * {@link PluginInstance} installs: the interpreter alone misses {@code br_if} and {@code
 * br_table}), and throws {@code ChicoryInterruptedException}; WASI's sleep stops on it too.
 *
 * <pre>
 * caller:   arm(timeout) ── guest runs on this thread ── disarm() ─ fired? clear the interrupt
 * watchdog: sleeps until the earliest armed deadline ── past it? interrupt that thread
 * </pre>
 *
 * <p>Why not a timer task per call: scheduling one takes a lock and, whenever the timer's queue
 * is empty (one caller at a time), wakes the timer thread, so every call would wake a second
 * thread, the very hand-off this replaces. Here a call costs a few volatile reads and writes
 * and a CAS, allocates nothing, and wakes nobody in the steady state.
 *
 * <p>When the watchdog wakes: at the earliest armed deadline; with nothing armed, after the
 * shortest timeout of the calls made since it last looked (so the next such call, whose
 * deadline is at least that far off, need not wake it); and after a few such naps with no call
 * at all, it sleeps until a call wakes it. A call wakes it only when its deadline comes before
 * the watchdog's next look: the first call after an idle spell, or one with a shorter timeout.
 */
final class Watchdog {
    private Watchdog() {}

    /** A watch's state: 0 idle, below 0 firing or fired, above 0 armed until that time. */
    private static final long IDLE = 0;
    private static final long FIRING = -1;
    private static final long FIRED = -2;
    /** Times are nanoTime minus BASE: positive for the next few centuries, so 0 and below are free. */
    private static final long BASE = System.nanoTime() - 1;
    /** Timeouts beyond this (about 73 years) count as this, so that deadlines never overflow. */
    private static final long MAX_TIMEOUT_NS = Long.MAX_VALUE / 4;
    /** Naps with no call at all before the watchdog sleeps until woken. */
    private static final int QUIET_NAPS = 4;

    /** One thread's deadline; a thread gets one on its first guest call. */
    static final class Watch {
        final Thread thread;
        final AtomicLong state = new AtomicLong(IDLE);
        /** The deadline last armed (written lazily): tells the watchdog calls happened since it looked. */
        private final AtomicLong lastArmed = new AtomicLong(IDLE);
        /** The timeout last armed, written before lastArmed. */
        private volatile long lastTimeout;
        /** lastArmed as the watchdog last saw it; the watchdog's own. */
        private long seen = IDLE;
        /** Set by the watchdog before FIRED: the thread had been interrupted already, by the app. */
        private boolean interruptedBefore;

        private Watch(Thread thread) {
            this.thread = thread;
        }

        /** Whether a deadline is armed or firing: a guest operation runs on this thread. */
        boolean busy() {
            return state.get() != IDLE;
        }

        /** Arms a deadline timeout from now; returns it, for {@link #disarm}. Only on its thread, only when idle. */
        long arm(Duration timeout) {
            long t = Math.min(Math.max(timeout.toNanos(), 1), MAX_TIMEOUT_NS);
            long deadline = now() + t;
            state.set(deadline);
            lastTimeout = t;
            lastArmed.lazySet(deadline);
            if (deadline - wakeAt < 0) {
                LockSupport.unpark(THREAD);
            }
            return deadline;
        }

        /**
         * Ends the operation armed with deadline; true when the watchdog fired on it. Its
         * interrupt is then cleared, so it never outlives the operation, unless the app had
         * interrupted the thread first: that one stays, set again in case the guest's WASI sleep
         * consumed it.
         *
         * <p>Not told apart: an app interrupt landing after the watchdog's and before this
         * clears it. A thread's interrupt status is one bit, so the two are one interrupt, and
         * keeping it would hand the deadline's interrupt to the app on every timeout. The window
         * is the time the guest takes to notice (microseconds compiled, one instruction
         * interpreted, at once in a sleep).
         */
        boolean disarm(long deadline) {
            if (state.compareAndSet(deadline, IDLE)) {
                return false;
            }
            while (state.get() == FIRING) {
                Thread.onSpinWait();
            }
            if (interruptedBefore) {
                Thread.currentThread().interrupt();
            } else {
                Thread.interrupted();
            }
            state.set(IDLE);
            return true;
        }

        /** Called by the watchdog for a deadline that has passed. */
        private void fire(long deadline) {
            if (!state.compareAndSet(deadline, FIRING)) {
                return; // the operation ended meanwhile
            }
            interruptedBefore = thread.isInterrupted();
            if (!interruptedBefore) {
                thread.interrupt();
            }
            state.set(FIRED);
        }
    }

    private static final ConcurrentLinkedQueue<Watch> WATCHES = new ConcurrentLinkedQueue<>();
    private static final ThreadLocal<Watch> MINE = ThreadLocal.withInitial(() -> {
        Watch w = new Watch(Thread.currentThread());
        WATCHES.add(w);
        return w;
    });
    /** When the watchdog looks next (Long.MAX_VALUE: not until a call wakes it). */
    private static volatile long wakeAt = Long.MAX_VALUE;
    private static final Thread THREAD = start();

    private static Thread start() {
        Thread t = new Thread(Watchdog::watch, "hotload-deadline");
        t.setDaemon(true);
        t.start();
        return t;
    }

    /** The calling thread's watch. */
    static Watch current() {
        return MINE.get();
    }

    private static long now() {
        return System.nanoTime() - BASE;
    }

    private static void watch() {
        int quiet = 0;
        long nap = MAX_TIMEOUT_NS;
        while (true) {
            long now = now();
            long next = Long.MAX_VALUE;
            boolean calls = false;
            long shortest = MAX_TIMEOUT_NS;
            for (Iterator<Watch> it = WATCHES.iterator(); it.hasNext();) {
                Watch w = it.next();
                long last = w.lastArmed.get();
                if (last != w.seen) {
                    w.seen = last;
                    calls = true;
                    shortest = Math.min(shortest, w.lastTimeout);
                }
                long d = w.state.get();
                if (d > 0) {
                    calls = true;
                    if (now - d >= 0) {
                        w.fire(d);
                    } else {
                        next = Math.min(next, d);
                    }
                } else if (d == IDLE && !w.thread.isAlive()) {
                    it.remove();
                }
            }
            quiet = calls ? 0 : quiet + 1;
            if (shortest < MAX_TIMEOUT_NS) {
                nap = shortest;
            }
            if (next == Long.MAX_VALUE && quiet <= QUIET_NAPS) {
                next = now + nap;
            }
            wakeAt = next;
            // A call that armed after its watch was read above but read the old wakeAt (so did
            // not wake us) is seen by this second look.
            if (earliest() - next < 0) {
                continue;
            }
            if (next == Long.MAX_VALUE) {
                LockSupport.park(Watchdog.class);
            } else {
                LockSupport.parkNanos(Watchdog.class, next - now());
            }
        }
    }

    /** The earliest armed deadline, or Long.MAX_VALUE. */
    private static long earliest() {
        long min = Long.MAX_VALUE;
        for (Watch w : WATCHES) {
            long d = w.state.get();
            if (d > 0) {
                min = Math.min(min, d);
            }
        }
        return min;
    }
}
