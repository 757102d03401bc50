package dev.hotload;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.dylibso.chicory.compiler.InterpreterFallback;
import com.dylibso.chicory.compiler.MachineFactoryCompiler;
import com.dylibso.chicory.runtime.ChicoryInterruptedException;
import com.dylibso.chicory.runtime.Instance;
import com.dylibso.chicory.runtime.Machine;
import com.dylibso.chicory.runtime.TrapException;
import com.dylibso.chicory.wasm.ChicoryException;
import com.dylibso.chicory.wasm.Parser;
import com.dylibso.chicory.wasm.WasmModule;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.Function;
import org.junit.jupiter.api.Test;

/**
 * Per-call deadlines enforced on the caller's own thread ({@link Guest}, {@link Watchdog}), and
 * modules kept in memory across loads ({@link CompiledModules}).
 */
class DeadlineTest {
    private static final byte[] X = "x".getBytes(StandardCharsets.UTF_8);

    private static void load(PluginHost host, String plugin, String revision, String file) throws LoadException {
        byte[] wasm = Conformance.pluginBytes(file);
        host.load(new LoadRequest(plugin, revision, Abi.digest(wasm), null, wasm));
    }

    /** Spins until interrupted, as Chicory's machines do at calls and loop back-edges. */
    /** Starts a thread that interrupts {@code caller} after {@code millis}, as an app would. */
    private static Thread interruptAfter(Thread caller, long millis) {
        Thread app = new Thread(() -> {
            try {
                Thread.sleep(millis);
            } catch (InterruptedException e) {
                return;
            }
            caller.interrupt();
        });
        app.start();
        return app;
    }

    private static Object spin() {
        while (true) {
            if (Thread.currentThread().isInterrupted()) {
                throw new ChicoryInterruptedException("Thread interrupted");
            }
            Thread.onSpinWait();
        }
    }

    @Test
    void aGuestPastItsDeadlineIsStoppedOnTheCallersThreadWhichIsLeftUninterrupted() {
        Thread caller = Thread.currentThread();
        AtomicReference<Thread> ranOn = new AtomicReference<>();
        long start = System.nanoTime();
        Guest.Fault f = assertThrows(Guest.Fault.class, () -> Guest.run(Duration.ofMillis(50), () -> {
            ranOn.set(Thread.currentThread());
            return spin();
        }));
        long ms = (System.nanoTime() - start) / 1_000_000;
        assertEquals(Failure.Kind.TIMEOUT, f.failure.kind(), f.getMessage());
        assertEquals(caller, ranOn.get());
        assertTrue(ms >= 50 && ms < 2_000, ms + " ms");
        assertFalse(Thread.currentThread().isInterrupted(), "the watchdog's interrupt leaked out of the call");
    }

    @Test
    void anInterruptedCallerIsCanceledAndStaysInterrupted() {
        AtomicInteger ran = new AtomicInteger();
        Thread.currentThread().interrupt();
        try {
            Guest.Fault f = assertThrows(Guest.Fault.class, () -> Guest.run(Duration.ofSeconds(5), () -> ran.incrementAndGet()));
            assertEquals(Failure.Kind.CANCELED, f.failure.kind(), f.getMessage());
            assertEquals(0, ran.get(), "the guest ran for a canceled caller");
            assertTrue(Thread.currentThread().isInterrupted(), "the app's interrupt was swallowed");
        } finally {
            Thread.interrupted();
        }
        // Interrupted by the app while the guest runs: canceled, not timeout, and still interrupted.
        interruptAfter(Thread.currentThread(), 50);
        try {
            Guest.Fault f = assertThrows(Guest.Fault.class, () -> Guest.run(Duration.ofSeconds(5), DeadlineTest::spin));
            assertEquals(Failure.Kind.CANCELED, f.failure.kind(), f.getMessage());
            assertTrue(Thread.currentThread().isInterrupted(), "the app's interrupt was swallowed");
        } finally {
            Thread.interrupted();
        }
    }

    @Test
    void deadlinesRacingTheEndOfManyShortCallsNeverLeakAnInterrupt() throws Exception {
        // A 20 µs deadline lands just before, during or just after a call of about that length.
        List<Thread> threads = new ArrayList<>();
        AtomicReference<String> leak = new AtomicReference<>();
        AtomicInteger timeouts = new AtomicInteger();
        for (int t = 0; t < 3; t++) {
            threads.add(new Thread(() -> {
                for (int i = 0; i < 20_000 && leak.get() == null; i++) {
                    long until = System.nanoTime() + 20_000;
                    try {
                        Guest.run(Duration.ofNanos(20_000), () -> {
                            while (System.nanoTime() < until) {
                                Thread.onSpinWait();
                            }
                            return null;
                        });
                    } catch (Guest.Fault f) {
                        timeouts.incrementAndGet();
                    }
                    if (Thread.currentThread().isInterrupted()) {
                        leak.set("interrupted after call " + i);
                    }
                }
            }));
        }
        threads.forEach(Thread::start);
        for (Thread t : threads) {
            t.join();
        }
        assertEquals(null, leak.get());
        assertEquals(0, timeouts.get(), "a guest that never checks for interrupts completes, as before");
        // The watchdog keeps working for later calls.
        assertEquals(Failure.Kind.TIMEOUT, assertThrows(Guest.Fault.class, () -> Guest.run(Duration.ofMillis(20), DeadlineTest::spin)).failure.kind());
    }

    @Test
    void aLoopingPluginTimesOutAndTheHostKeepsServingOnTheSameThread() throws Exception {
        for (boolean compile : new boolean[] {true, false}) {
            HostConfig cfg = HostConfig.builder().instancesPerRevision(1).callTimeout(Duration.ofMillis(100)).compile(compile).build();
            try (PluginHost host = new PluginHost(cfg)) {
                load(host, "slow", "r1", "handle-loop.wasm");
                load(host, "ok", "r1", "tagger-v1.wasm");
                for (int i = 0; i < 2; i++) { // the second one on a fresh instance: the first was discarded
                    long start = System.nanoTime();
                    CallException e = assertThrows(CallException.class, () -> host.call("slow", X));
                    long ms = (System.nanoTime() - start) / 1_000_000;
                    assertEquals(Failure.Kind.TIMEOUT, e.failure().kind(), e.getMessage());
                    assertTrue(ms < 2_000, "compile=" + compile + ": stopped after " + ms + " ms");
                    assertFalse(Thread.currentThread().isInterrupted());
                    assertEquals("v01:xv01:", new String(host.call("ok", X), StandardCharsets.UTF_8));
                }
            }
        }
    }

    /**
     * Calls host's plugin "slow" on a thread of its own and waits at most 5 s for it: a guest
     * the deadline cannot stop would otherwise hang the test for good.
     */
    private static Object callBounded(PluginHost host, String what) throws InterruptedException {
        return runBounded(what + ": the call", () -> {
            host.call("slow", X);
            return "returned";
        });
    }

    /** A guest call that may hang. */
    private interface GuestCall {
        Object run() throws Throwable;
    }

    /**
     * Runs {@code call} on a thread of its own and waits at most 5 s for it; returns what it
     * returned or threw.
     */
    private static Object runBounded(String what, GuestCall call) throws InterruptedException {
        AtomicReference<Object> outcome = new AtomicReference<>();
        Thread caller = new Thread(() -> {
            try {
                outcome.set(call.run());
            } catch (Throwable t) {
                outcome.set(t);
            }
        }, "bounded-caller");
        caller.setDaemon(true);
        caller.start();
        caller.join(5_000);
        assertFalse(caller.isAlive(), what + " was still running 5 s after its 100 ms deadline");
        return outcome.get();
    }

    @Test
    void loopsThroughBrIfAndBrTableStopAtTheDeadlineInterpretedOrCompiled() throws Exception {
        for (boolean compile : new boolean[] {false, true}) {
            for (String file : new String[] {"handle-loop-br-if.wasm", "handle-loop-br-table.wasm"}) {
                String what = file + " compile=" + compile;
                HostConfig cfg = HostConfig.builder().instancesPerRevision(1).callTimeout(Duration.ofMillis(100)).compile(compile).build();
                try (PluginHost host = new PluginHost(cfg)) {
                    load(host, "slow", "r1", file);
                    for (int i = 0; i < 2; i++) {
                        Object outcome = callBounded(host, what);
                        CallException e = assertInstanceOf(CallException.class, outcome, what);
                        assertEquals(Failure.Kind.TIMEOUT, e.failure().kind(), what + ": " + e.getMessage());
                    }
                }
            }
        }
    }

    @Test
    void aFunctionTheCompilerLeavesToTheInterpreterStillStopsAtTheDeadline() throws Exception {
        // What Chicory's compiler does with a function too large for a JVM method
        // (InterpreterFallback.SILENT): that function alone runs in its interpreter.
        WasmModule module = Parser.parse(Conformance.pluginBytes("handle-loop-br-if.wasm"));
        int handle = -1;
        for (int i = 0; i < module.exportSection().exportCount(); i++) {
            if (module.exportSection().getExport(i).name().equals(Abi.HANDLE)) {
                handle = module.exportSection().getExport(i).index();
            }
        }
        Function<Instance, Machine> machine = MachineFactoryCompiler.builder(module)
                .withInterpreterFallback(InterpreterFallback.FAIL)
                .withInterpretedFunctions(Set.of(handle))
                .compile();
        PluginInstance inst = PluginInstance.create(new CompiledModules.Compiled(module, new Abi.Capabilities(), machine, false, false), 1 << 24,
                Duration.ofMillis(100));
        Object outcome = runBounded("the interpreted handle", () -> inst.handle(X));
        Guest.Fault f = assertInstanceOf(Guest.Fault.class, outcome);
        assertEquals(Failure.Kind.TIMEOUT, f.failure.kind(), f.getMessage());
    }

    @Test
    void anAppInterruptDuringAWasiSleepIsCanceledAndTheThreadStaysInterrupted() throws Exception {
        HostConfig cfg = HostConfig.builder().instancesPerRevision(1).callTimeout(Duration.ofSeconds(5)).build();
        try (PluginHost host = new PluginHost(cfg)) {
            load(host, "sleepy", "r1", "handle-sleep.wasm"); // sleeps 10 s in poll_oneoff
            Thread app = interruptAfter(Thread.currentThread(), 100);
            long start = System.nanoTime();
            Object outcome;
            try {
                host.call("sleepy", X);
                outcome = "returned";
            } catch (CallException e) {
                outcome = e;
            }
            long ms = (System.nanoTime() - start) / 1_000_000;
            boolean interrupted = Thread.interrupted(); // cleared before join, which would throw
            app.join();
            CallException e = assertInstanceOf(CallException.class, outcome);
            assertEquals(Failure.Kind.CANCELED, e.failure().kind(), e.getMessage());
            assertTrue(ms < 2_000, "stopped after " + ms + " ms");
            assertTrue(interrupted, "the app's interrupt was swallowed by the sleep");
        }
    }

    @Test
    void anAppInterruptThatCameFirstSurvivesATimeoutWhoseGuestConsumedIt() {
        // The app interrupts, then the deadline passes before the guest notices, then the guest
        // (as WASI's sleep does) clears the interrupt and throws: timeout, and still interrupted.
        Guest.Fault f = assertThrows(Guest.Fault.class, () -> Guest.run(Duration.ofMillis(30), () -> {
            Thread.currentThread().interrupt();
            Watchdog.Watch watch = Watchdog.current();
            long until = System.nanoTime() + 5_000_000_000L;
            while (watch.state.get() >= 0 && System.nanoTime() < until) { // until the watchdog has fired
                Thread.onSpinWait();
            }
            Thread.interrupted();
            throw new ChicoryException("Thread interrupted", new InterruptedException());
        }));
        try {
            assertEquals(Failure.Kind.TIMEOUT, f.failure.kind(), f.getMessage());
            assertTrue(Thread.currentThread().isInterrupted(), "the app's interrupt was lost");
        } finally {
            Thread.interrupted();
        }
    }

    @Test
    void whatAnInterruptLooksLikeWhenAGuestStops() {
        assertTrue(Guest.stoppedByInterrupt(new ChicoryInterruptedException("Thread interrupted")));
        assertTrue(Guest.stoppedByInterrupt(new ChicoryException("Thread interrupted", new InterruptedException())));
        assertTrue(Guest.stoppedByInterrupt(new RuntimeException(new ChicoryInterruptedException("x"))));
        assertFalse(Guest.stoppedByInterrupt(new TrapException("unreachable")));
        assertFalse(Guest.stoppedByInterrupt(new ChicoryException("Thread interrupted")));
    }

    @Test
    void aRevisionLoadedBeforeComesFromMemoryAndStillGetsFreshInstancesAndTheHandOver() throws Exception {
        byte[] v1 = Conformance.pluginBytes("tagger-v1.wasm");
        byte[] v2 = Conformance.pluginBytes("tagger-v2.wasm");
        try (PluginHost host = new PluginHost(HostConfig.builder().instancesPerRevision(1).build())) {
            Loaded first = host.load(new LoadRequest("auth", "r1", Abi.digest(v1), null, v1));
            assertEquals("uncached", first.cache());
            host.call("auth", X);
            host.call("auth", X);
            assertEquals("uncached", host.load(new LoadRequest("auth", "r2", Abi.digest(v2), null, v2)).cache());
            host.call("auth", X);
            Loaded back = host.load(new LoadRequest("auth", "r3", Abi.digest(v1), null, v1));
            assertEquals("hit", back.cache(), back.health());
            assertEquals(4, back.stateBytes());
            assertEquals("v01:xv01:", new String(host.call("auth", X), StandardCharsets.UTF_8));
            // The count handed over (2 on r1, 1 on r2, 1 now) shows a fresh instance that restored it.
            byte[] count = host.call("auth", new byte[0]);
            assertEquals(4, count[0]);
        }
    }
}
