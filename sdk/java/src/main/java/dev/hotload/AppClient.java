package dev.hotload;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Objects;

/**
 * One worker's link to the Hotload sidecar (app protocol v2, docs/protocol.md): connects to the
 * app socket, says hello with its worker id, hands every load to its {@link PluginHost} and
 * answers loaded or failed, answers every unload, and reconnects with back-off whenever the
 * connection drops. Each process of an app runs its own client.
 *
 * <pre>
 * connect ─ hello ─┬─ load ─── host.load (on the client's thread, never a request) ─ loaded | failed
 *                  ├─ unload ─ host.unload ──────────────────────────────────────── unloaded
 *                  └─ error, garbage: logged, connection kept
 * drop ─ wait 50 ms, 100 ms, … 2 s ─ connect again (same worker id)
 * </pre>
 */
public final class AppClient implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger("dev.hotload.client");

    /** Where the sidecar listens unless HOTLOAD_APP_SOCKET says otherwise. */
    public static final String DEFAULT_SOCKET = "/var/run/hotload/app.sock";

    private final PluginHost host;
    private final Path socket;
    private final String app;
    private final String worker;
    private final Duration minBackoff;
    private final Duration maxBackoff;
    private final Duration healthInterval;
    private final Thread thread;
    private volatile boolean closed;
    private volatile SocketChannel channel;

    private AppClient(Builder b) {
        this.host = b.host;
        String s = b.socket;
        if (s == null || s.isEmpty()) {
            s = System.getenv("HOTLOAD_APP_SOCKET");
        }
        this.socket = Path.of(s == null || s.isEmpty() ? DEFAULT_SOCKET : s);
        this.app = b.app;
        this.worker = b.worker != null ? b.worker : Long.toString(ProcessHandle.current().pid());
        this.minBackoff = b.minBackoff;
        this.maxBackoff = b.maxBackoff.compareTo(b.minBackoff) < 0 ? b.minBackoff : b.maxBackoff;
        this.healthInterval = b.healthInterval;
        this.thread = new Thread(this::run, "hotload-client");
        this.thread.setDaemon(true);
    }

    /** A builder for a client that loads into host. */
    public static Builder builder(PluginHost host) {
        return new Builder(host);
    }

    /** Configures an {@link AppClient}; every field has a default. */
    public static final class Builder {
        private final PluginHost host;
        private String socket;
        private String app = "java-app";
        private String worker;
        private Duration minBackoff = Duration.ofMillis(50);
        private Duration maxBackoff = Duration.ofSeconds(2);
        private Duration healthInterval = Duration.ofMillis(PluginHealth.INTERVAL_MS);

        private Builder(PluginHost host) {
            this.host = Objects.requireNonNull(host);
        }

        /** The app socket (default: $HOTLOAD_APP_SOCKET, else /var/run/hotload/app.sock). */
        public Builder socket(String path) {
            this.socket = path;
            return this;
        }

        /** A free-form app name shown by the sidecar. */
        public Builder app(String app) {
            this.app = Objects.requireNonNull(app);
            return this;
        }

        /** This process's stable worker id (default: the process id). */
        public Builder worker(String worker) {
            this.worker = Objects.requireNonNull(worker);
            return this;
        }

        /** Bounds of the wait between connection attempts (default 50 ms doubling to 2 s). */
        public Builder backoff(Duration min, Duration max) {
            this.minBackoff = Objects.requireNonNull(min);
            this.maxBackoff = Objects.requireNonNull(max);
            return this;
        }

        /**
         * How often the host's call counts ({@link PluginHost#takeHealth()}) go to the sidecar
         * in a {@code health} message while calls happen (default 1 s).
         */
        public Builder healthInterval(Duration interval) {
            if (interval.isNegative() || interval.isZero()) {
                throw new IllegalArgumentException("health interval must be positive");
            }
            this.healthInterval = interval;
            return this;
        }

        /** Builds the client and starts its thread. */
        public AppClient start() {
            AppClient c = new AppClient(this);
            c.thread.start();
            return c;
        }
    }

    /** The id this client says hello with. */
    public String worker() {
        return worker;
    }

    /** Disconnects and stops reconnecting (as a process exit would); waits for the thread. */
    @Override
    public void close() {
        closed = true;
        SocketChannel ch = channel;
        if (ch != null) {
            try {
                ch.close();
            } catch (IOException e) {
                // closing anyway
            }
        }
        thread.interrupt();
        try {
            thread.join(10_000);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    private void run() {
        Duration delay = minBackoff;
        while (!closed) {
            try (SocketChannel ch = SocketChannel.open(UnixDomainSocketAddress.of(socket))) {
                channel = ch;
                if (closed) {
                    break;
                }
                delay = minBackoff;
                session(ch);
                if (!closed) {
                    LOG.log(System.Logger.Level.WARNING, "sidecar link dropped: the sidecar closed the connection");
                }
            } catch (IOException | RuntimeException e) {
                if (!closed) {
                    LOG.log(System.Logger.Level.DEBUG, "sidecar not reachable: {0}", e.toString());
                }
            } finally {
                channel = null;
            }
            if (closed) {
                break;
            }
            try {
                Thread.sleep(delay.toMillis());
            } catch (InterruptedException e) {
                if (closed) {
                    break;
                }
            }
            delay = Protocol.nextBackoff(delay, minBackoff, maxBackoff);
        }
    }

    /** Speaks the protocol on one connection until it drops. */
    private void session(SocketChannel ch) throws IOException {
        write(ch, Protocol.hello(app, worker));
        Thread reporter = new Thread(() -> reportHealth(ch), "hotload-health");
        reporter.setDaemon(true);
        reporter.start();
        try {
            serve(ch);
        } finally {
            reporter.interrupt();
            try {
                reporter.join(10_000);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }

    /**
     * Sends the host's counts every health interval until the session ends, and nothing while
     * no call happened. Counts taken for a report that could not be sent are lost, as the
     * protocol says (a dropped connection loses its last report, never more).
     */
    private void reportHealth(SocketChannel ch) {
        while (!Thread.currentThread().isInterrupted()) {
            try {
                Thread.sleep(healthInterval.toMillis());
            } catch (InterruptedException e) {
                return;
            }
            List<PluginHealth> plugins = host.takeHealth();
            if (plugins.isEmpty()) {
                continue;
            }
            try {
                write(ch, Protocol.health(plugins));
            } catch (IOException e) {
                LOG.log(System.Logger.Level.DEBUG, "could not send a health report: {0}", e.toString());
                return;
            }
        }
    }

    private void serve(SocketChannel ch) throws IOException {
        LOG.log(System.Logger.Level.INFO, "connected to the sidecar at {0} as worker {1}", socket, worker);
        ByteBuffer buf = ByteBuffer.allocate(64 << 10);
        ByteArrayOutputStream line = new ByteArrayOutputStream();
        boolean tooLong = false;
        int n = 0;
        while (true) {
            buf.clear();
            if (ch.read(buf) < 0) {
                return;
            }
            buf.flip();
            while (buf.hasRemaining()) {
                byte b = buf.get();
                if (b != '\n') {
                    if (!tooLong) {
                        line.write(b);
                        if (line.size() > Protocol.MAX_SIDECAR_LINE) {
                            tooLong = true;
                            line.reset();
                        }
                    }
                    continue;
                }
                n++;
                if (tooLong) {
                    LOG.log(System.Logger.Level.WARNING, "skipped an overlong line {0} from the sidecar", n);
                    tooLong = false;
                    continue;
                }
                byte[] bytes = line.toByteArray();
                line.reset();
                byte[] reply = answer(bytes, n);
                if (reply != null) {
                    write(ch, reply);
                }
            }
        }
    }

    /** Writes one whole line; answers and health reports share the connection. */
    private static void write(SocketChannel ch, byte[] bytes) throws IOException {
        ByteBuffer b = ByteBuffer.wrap(bytes);
        synchronized (ch) {
            while (b.hasRemaining()) {
                ch.write(b);
            }
        }
    }

    /** Carries out one line and returns the reply, or null when none is due. */
    private byte[] answer(byte[] line, int n) {
        Protocol.SidecarMessage msg;
        try {
            msg = Protocol.parse(line);
        } catch (Protocol.Unusable e) {
            LOG.log(System.Logger.Level.WARNING, "unusable message (line {0}) from the sidecar: {1}", n, e.getMessage());
            return null;
        }
        switch (msg.type()) {
            case "load":
                try {
                    Loaded l = load(msg);
                    return Protocol.loaded(msg.plugin(), msg.revision(), l.health());
                } catch (LoadException e) {
                    return Protocol.failed(msg.plugin(), msg.revision(), e.getMessage());
                } catch (RuntimeException e) {
                    return Protocol.failed(msg.plugin(), msg.revision(),
                            "plugin " + msg.plugin() + " revision " + msg.revision() + ": " + e);
                }
            case "unload":
                host.unload(msg.plugin());
                return Protocol.unloaded(msg.plugin());
            default:
                LOG.log(System.Logger.Level.WARNING, "the sidecar refused a message: {0}", msg.reason());
                return null;
        }
    }

    private Loaded load(Protocol.SidecarMessage msg) throws LoadException {
        if (msg.path().isEmpty()) {
            throw LoadException.noPath(msg.plugin(), msg.revision());
        }
        LoadRequest req;
        try {
            req = LoadRequest.read(msg.plugin(), msg.revision(), Path.of(msg.path()), msg.digest(), msg.config());
        } catch (LoadException e) {
            host.reportLoadFailed(e);
            throw e;
        }
        return host.load(req);
    }
}
