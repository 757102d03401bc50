package dev.hotload;

import java.time.Duration;
import java.util.concurrent.LinkedBlockingDeque;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

/**
 * One loaded revision of a plugin: a fixed pool of warm instances that calls check out.
 *
 * <p>Why long-lived pooled instances: plugins keep state (caches, counters) that the ABI hands
 * over across a swap. An instance that faulted (trap, deadline, memory limit) is discarded and
 * its place becomes a token; a later checkout that takes a token creates a fresh instance.
 *
 * <p>Lifetime: a revision counts references, one held by its slot while it serves and one by
 * every call or {@link Pinned} in flight. The swap only moves the slot's pointer; the last
 * reference to go drops the instances. That is how a swap never cuts a call off and never
 * waits for one.
 */
final class Revision {
    /** What a revision needs to make instances. */
    record Spec(CompiledModules.Compiled module, int instances, long maxMemory, Duration callTimeout, Duration checkoutTimeout) {}

    /** Stands for an instance that was discarded and may be re-created. */
    private static final Object TOKEN = new Object();

    final RevisionId id;
    final Spec spec;
    /**
     * Idle instances and tokens: always instances minus the lent-out ones. Instances come back
     * to the front and are lent from there (last in, first out), tokens go to the back: the
     * instance used last, whose memory is still in the CPU's caches, serves next, and a fresh
     * revision's cold instances are touched only as concurrency needs them (round-robin over
     * all of them would make every swap cost one cold call per instance).
     */
    private final LinkedBlockingDeque<Object> pool = new LinkedBlockingDeque<>();
    private final AtomicLong refs = new AtomicLong(1);
    /** Where its calls count: set (before it is published) when it starts serving. */
    private HealthTable.Entry health;
    private HealthTable healthTable;

    /** Why making an instance ready failed: at instantiation or in configure. */
    static final class InstantiateFailure extends Exception {
        private static final long serialVersionUID = 1L;
        final boolean configure;
        final transient Failure failure;

        InstantiateFailure(boolean configure, Failure failure) {
            super(failure.toString(), null, false, false);
            this.configure = configure;
            this.failure = failure;
        }
    }

    private Revision(RevisionId id, Spec spec) {
        this.id = id;
        this.spec = spec;
    }

    /** Creates the revision with all its instances configured; the caller holds its one reference. */
    static Revision create(RevisionId id, Spec spec) throws InstantiateFailure {
        Revision r = new Revision(id, spec);
        for (int i = 0; i < spec.instances(); i++) {
            r.pool.add(r.instantiate());
        }
        return r;
    }

    private PluginInstance instantiate() throws InstantiateFailure {
        PluginInstance inst;
        try {
            inst = PluginInstance.create(spec.module(), spec.maxMemory(), spec.callTimeout());
        } catch (Guest.Fault f) {
            throw new InstantiateFailure(false, f.failure);
        }
        try {
            inst.configure(id.config());
        } catch (Guest.Fault f) {
            throw new InstantiateFailure(true, f.failure);
        }
        return inst;
    }

    /** Takes a reference unless the revision is already closed. */
    boolean acquire() {
        while (true) {
            long n = refs.get();
            if (n <= 0) {
                return false;
            }
            if (refs.compareAndSet(n, n + 1)) {
                return true;
            }
        }
    }

    /** Drops a reference; the last one lets every instance go. */
    void release() {
        if (refs.decrementAndGet() == 0) {
            pool.clear();
            if (health != null) {
                healthTable.leave(health);
            }
        }
    }

    /** Counts this revision's calls in table, from now on; called once, before it is published. */
    void countIn(HealthTable table) {
        this.healthTable = table;
        this.health = table.join(id.plugin(), id.revision());
    }

    /** Counts a returned call the app found failed. */
    void markFailed() {
        if (health != null) {
            health.markFailed();
        }
    }

    /** Borrows an instance, re-creating a discarded one, waiting up to the checkout timeout. */
    PluginInstance checkout() throws CallException, InterruptedException {
        long start = System.nanoTime();
        Object o = pool.pollFirst();
        if (o == null) {
            o = pool.pollFirst(spec.checkoutTimeout().toNanos(), TimeUnit.NANOSECONDS);
        }
        if (o == null) {
            throw CallException.busy(id.plugin(), id.revision(), (System.nanoTime() - start) / 1_000_000);
        }
        if (o != TOKEN) {
            return (PluginInstance) o;
        }
        try {
            return instantiate();
        } catch (InstantiateFailure e) {
            pool.add(TOKEN);
            throw CallException.reinstantiate(id.plugin(), id.revision(), e.failure);
        }
    }

    /** Returns an instance; one that faulted may be half-updated and is dropped instead. */
    void checkin(PluginInstance inst, boolean faulted) {
        if (faulted) {
            pool.addLast(TOKEN);
        } else {
            pool.addFirst(inst);
        }
    }

    /** Runs f on every instance; only before the revision is published, when all are idle. */
    Failure forEachInstance(InstanceOp f) {
        int n = pool.size();
        Failure failure = null;
        for (int i = 0; i < n; i++) {
            Object o = pool.poll();
            if (failure == null && o instanceof PluginInstance) {
                try {
                    f.apply((PluginInstance) o);
                } catch (Guest.Fault e) {
                    failure = e.failure;
                }
            }
            pool.add(o);
        }
        return failure;
    }

    /** An operation on one instance. */
    interface InstanceOp {
        void apply(PluginInstance inst) throws Guest.Fault;
    }

    /** Handles one request on a pooled instance, and counts it. */
    byte[] call(byte[] input) throws CallException, InterruptedException {
        long start = System.nanoTime();
        Throwable err = null;
        try {
            return handle(input);
        } catch (CallException | InterruptedException | RuntimeException e) {
            err = e;
            throw e;
        } finally {
            if (health != null) {
                health.record(System.nanoTime() - start, HealthTable.outcomeOf(err));
            }
        }
    }

    private byte[] handle(byte[] input) throws CallException, InterruptedException {
        PluginInstance inst = checkout();
        byte[] out;
        try {
            out = inst.handle(input);
        } catch (Guest.Fault f) {
            checkin(inst, true);
            throw CallException.handle(id.plugin(), id.revision(), f.failure);
        }
        checkin(inst, false);
        return out;
    }
}
