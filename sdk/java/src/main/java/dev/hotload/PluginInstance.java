package dev.hotload;

import com.dylibso.chicory.log.Logger;
import com.dylibso.chicory.log.SystemLogger;
import com.dylibso.chicory.runtime.ChicoryInterruptedException;
import com.dylibso.chicory.runtime.ExecutionListener;
import com.dylibso.chicory.runtime.ExportFunction;
import com.dylibso.chicory.runtime.ImportValues;
import com.dylibso.chicory.runtime.Instance;
import com.dylibso.chicory.runtime.Memory;
import com.dylibso.chicory.wasi.WasiOptions;
import com.dylibso.chicory.wasi.WasiPreview1;
import java.io.ByteArrayInputStream;
import java.io.OutputStream;
import java.security.SecureRandom;
import java.time.Clock;
import java.time.Duration;

/**
 * One live instance of a revision: its Chicory instance, memory and exports, and the
 * byte-level operations that move requests, config and state across the ABI, each under one
 * call deadline. An instance serves one operation at a time (the revision's pool lends it out);
 * one that faulted is discarded by its revision.
 */
final class PluginInstance {
    private static final SecureRandom RANDOM = new SecureRandom();

    /**
     * Makes Chicory's interpreter stop on interrupt before every instruction it runs. On its
     * own it checks only at calls, {@code call_indirect} and {@code br}, not at {@code br_if} or
     * {@code br_table}, so the usual compiled loop ({@code loop ... br_if}) would never see the
     * deadline when interpreted: with {@code compile(false)}, or in a function Chicory's compiler
     * leaves to the interpreter (one too large for a JVM method). Compiled code never calls it
     * (and checks at every back-edge itself), so it costs nothing there.
     */
    private static final ExecutionListener STOP_ON_INTERRUPT = (instruction, stack) -> {
        if (Thread.currentThread().isInterrupted()) {
            throw new ChicoryInterruptedException("Thread interrupted");
        }
    };

    private final Memory mem;
    private final Duration timeout;
    private final ExportFunction alloc;
    private final ExportFunction handle;
    private final ExportFunction configure;
    private final ExportFunction selfCheck;
    private final ExportFunction saveState;
    private final ExportFunction restoreState;

    private PluginInstance(Instance inst, Abi.Capabilities caps, Duration timeout) {
        this.mem = inst.memory();
        this.timeout = timeout;
        this.alloc = inst.export(Abi.ALLOC);
        this.handle = inst.export(Abi.HANDLE);
        this.configure = caps.configure ? inst.export(Abi.CONFIGURE) : null;
        this.selfCheck = caps.selfCheck ? inst.export(Abi.SELF_CHECK) : null;
        this.saveState = caps.saveState ? inst.export(Abi.SAVE_STATE) : null;
        this.restoreState = caps.restoreState ? inst.export(Abi.RESTORE_STATE) : null;
    }

    /**
     * The logger of every instance's WASI (it keeps no state). Given none, WasiPreview1's
     * builder looks for Android on every build, with a Class.forName that fails: a class path
     * search and an exception per instance.
     */
    private static final Logger WASI_LOG = new SystemLogger();

    /**
     * The WASI a plugin gets: real clocks and randomness, nothing else (no files, environment,
     * arguments or sockets; stdout and stderr discarded).
     */
    static WasiPreview1 sandboxedWasi() {
        return WasiPreview1.builder()
                .withLogger(WASI_LOG)
                .withOptions(WasiOptions.builder()
                        .withStdout(OutputStream.nullOutputStream())
                        .withStderr(OutputStream.nullOutputStream())
                        .withStdin(new ByteArrayInputStream(new byte[0]))
                        .withClock(Clock.systemUTC())
                        .withRandom(RANDOM)
                        .build())
                .build();
    }

    /**
     * Instantiates the module (start function included) and runs _initialize, under the deadline.
     * A module that imports nothing gets no WASI: its 48 host functions would go unused.
     */
    static PluginInstance create(CompiledModules.Compiled module, long maxMemory, Duration timeout) throws Guest.Fault {
        return Guest.run(timeout, () -> {
            Instance.Builder b = Instance.builder(module.module())
                    .withMemoryFactory(limits -> new LimitedMemory(limits, maxMemory))
                    .withStart(false)
                    .withUnsafeExecutionListener(STOP_ON_INTERRUPT);
            if (module.wasi()) {
                b.withImportValues(ImportValues.builder().addFunction(sandboxedWasi().toHostFunctions()).build());
            }
            if (module.machine() != null) {
                b.withMachineFactory(module.machine());
            }
            Instance inst = b.build();
            if (module.initialize()) {
                inst.export(Abi.INITIALIZE).apply();
            }
            return new PluginInstance(inst, module.caps(), timeout);
        });
    }

    private long memSize() {
        return (long) mem.pages() * Memory.PAGE_SIZE;
    }

    /** Copies b into guest memory through alloc; returns the pointer. */
    private long write(byte[] b) throws Guest.Fault {
        long ptr = Integer.toUnsignedLong((int) alloc.apply(b.length)[0]);
        if (!Abi.checkedRange(ptr, b.length, memSize())) {
            throw new Guest.Fault(Failure.badRange(ptr, b.length));
        }
        mem.write((int) ptr, b, 0, b.length);
        return ptr;
    }

    /** Copies a packed (ptr, len) out of guest memory. */
    private byte[] read(long packed) throws Guest.Fault {
        long ptr = Abi.unpackPtr(packed);
        long len = Abi.unpackLen(packed);
        if (!Abi.checkedRange(ptr, len, memSize())) {
            throw new Guest.Fault(Failure.badRange(ptr, len));
        }
        return len == 0 ? new byte[0] : mem.readBytes((int) ptr, (int) len);
    }

    private static void status(long code) throws Guest.Fault {
        int s = (int) code;
        if (s != 0) {
            throw new Guest.Fault(Failure.status(s));
        }
    }

    /** Handles one request. */
    byte[] handle(byte[] input) throws Guest.Fault {
        return Guest.run(timeout, () -> {
            long ptr = write(input);
            return read(handle.apply(ptr, input.length)[0]);
        });
    }

    /** Hands the config bytes over, if the plugin takes config. */
    void configure(byte[] config) throws Guest.Fault {
        if (configure == null) {
            return;
        }
        Guest.run(timeout, () -> {
            long ptr = write(config);
            status(configure.apply(ptr, config.length)[0]);
            return null;
        });
    }

    /** Runs the self-check, if exported. */
    void selfCheck() throws Guest.Fault {
        if (selfCheck == null) {
            return;
        }
        Guest.run(timeout, () -> {
            status(selfCheck.apply()[0]);
            return null;
        });
    }

    /** Takes a state snapshot; null when the plugin exports no save_state. */
    byte[] saveState() throws Guest.Fault {
        if (saveState == null) {
            return null;
        }
        return Guest.run(timeout, () -> read(saveState.apply()[0]));
    }

    /** Hands a snapshot over; a plugin without restore_state ignores it. */
    void restoreState(byte[] snapshot) throws Guest.Fault {
        if (restoreState == null) {
            return;
        }
        Guest.run(timeout, () -> {
            long ptr = write(snapshot);
            status(restoreState.apply(ptr, snapshot.length)[0]);
            return null;
        });
    }
}
