package dev.hotload;

import static dev.hotload.Conformance.obj;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Base64;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.TestFactory;

/**
 * Plays the sidecar of every sdk/conformance/transcripts/*.jsonl against an {@link AppClient}:
 * listens on a Unix socket, lets the client connect, and runs the lines in order.
 */
class TranscriptTest {
    private static final long APP_WAIT_MS = 10_000;

    @TestFactory
    Stream<DynamicTest> transcripts() throws Exception {
        List<Path> files = new ArrayList<>();
        try (Stream<Path> s = Files.list(Conformance.dir().resolve("transcripts"))) {
            s.filter(p -> p.toString().endsWith(".jsonl")).sorted().forEach(files::add);
        }
        assertTrue(files.size() > 0, "no transcripts");
        return files.stream().map(f -> DynamicTest.dynamicTest(f.getFileName().toString(), () -> run(f)));
    }

    /** One accepted connection: lines from the app arrive on a queue. */
    private static final class Conn {
        final SocketChannel ch;
        final LinkedBlockingQueue<String> lines = new LinkedBlockingQueue<>();

        Conn(SocketChannel ch) {
            this.ch = ch;
            Thread t = new Thread(this::read, "transcript-reader");
            t.setDaemon(true);
            t.start();
        }

        private void read() {
            ByteBuffer buf = ByteBuffer.allocate(1 << 16);
            java.io.ByteArrayOutputStream line = new java.io.ByteArrayOutputStream();
            try {
                while (ch.read(buf) >= 0) {
                    buf.flip();
                    while (buf.hasRemaining()) {
                        byte b = buf.get();
                        if (b == '\n') {
                            lines.add(line.toString(StandardCharsets.UTF_8));
                            line.reset();
                        } else {
                            line.write(b);
                        }
                    }
                    buf.clear();
                }
            } catch (IOException e) {
                // the connection was dropped
            }
        }

        void send(byte[] b) throws IOException {
            ByteBuffer bb = ByteBuffer.wrap(b);
            while (bb.hasRemaining()) {
                ch.write(bb);
            }
        }
    }

    private static Conn accept(ServerSocketChannel server) throws Exception {
        return new Conn(CompletableFuture.supplyAsync(() -> {
            try {
                return server.accept();
            } catch (IOException e) {
                throw new java.io.UncheckedIOException(e);
            }
        }).get(APP_WAIT_MS, TimeUnit.MILLISECONDS));
    }

    private static void run(Path file) throws Exception {
        Map<String, Object> doc = Conformance.cases();
        Path dir = Files.createTempDirectory(Path.of("/tmp"), "hl-transcript");
        Path sock = dir.resolve("app.sock");
        try (ServerSocketChannel server = ServerSocketChannel.open(StandardProtocolFamily.UNIX);
                PluginHost host = new PluginHost(Conformance.hostConfig(obj(doc.get("host")), null, new Hooks() {}))) {
            server.bind(UnixDomainSocketAddress.of(sock));
            try (AppClient client = AppClient.builder(host).socket(sock.toString()).app("sdk-java-transcript").start()) {
                Conn conn = accept(server);
                int n = 0;
                for (String raw : Files.readAllLines(file)) {
                    n++;
                    if (raw.isBlank()) {
                        continue;
                    }
                    String what = file.getFileName() + " line " + n;
                    Map<String, Object> line = obj(substitute(Json.parse(raw), client.worker()));
                    if (line.containsKey("comment")) {
                        continue;
                    }
                    if (line.containsKey("app_sends")) {
                        // A health report may come whenever calls happened; it is skipped
                        // unless the line expects one.
                        boolean wantsHealth = "health".equals(obj(line.get("app_sends")).get("type"));
                        long until = System.nanoTime() + APP_WAIT_MS * 1_000_000L;
                        String got;
                        Object gotJson;
                        do {
                            got = conn.lines.poll(Math.max(1, (until - System.nanoTime()) / 1_000_000), TimeUnit.MILLISECONDS);
                            assertNotNull(got, what + ": the app sent nothing");
                            gotJson = Json.parse(got);
                        } while (!wantsHealth && gotJson instanceof Map<?, ?> m && "health".equals(m.get("type")));
                        String mismatch = match(line.get("app_sends"), gotJson, "");
                        assertNull(mismatch, what + ": app sent " + got + ": " + mismatch);
                    } else if (line.containsKey("sidecar_sends")) {
                        conn.send((Json.write(line.get("sidecar_sends")) + "\n").getBytes(StandardCharsets.UTF_8));
                    } else if (line.containsKey("sidecar_sends_raw")) {
                        conn.send(((String) line.get("sidecar_sends_raw")).getBytes(StandardCharsets.UTF_8));
                    } else if (line.containsKey("sidecar_sends_b64")) {
                        conn.send(Base64.getDecoder().decode((String) line.get("sidecar_sends_b64")));
                    } else if (line.containsKey("sidecar_sends_long_line")) {
                        byte[] b = new byte[(int) ((Json.Num) line.get("sidecar_sends_long_line")).longValue() + 1];
                        Arrays.fill(b, (byte) 'x');
                        b[b.length - 1] = '\n';
                        conn.send(b);
                    } else if (line.containsKey("app_silent_ms")) {
                        long ms = ((Json.Num) line.get("app_silent_ms")).longValue();
                        String got = conn.lines.poll(ms, TimeUnit.MILLISECONDS);
                        assertNull(got, what + ": the app should be silent");
                    } else if (line.containsKey("drop_connection")) {
                        conn.ch.close();
                        conn = accept(server);
                    } else if (line.containsKey("call")) {
                        Map<String, Object> op = obj(line.get("call"));
                        byte[] out = null;
                        HotloadException err = null;
                        try {
                            out = host.call((String) op.get("plugin"), Conformance.input(op));
                        } catch (CallException e) {
                            err = e;
                        }
                        Conformance.checkCall(what, obj(line.get("expect")), out, err);
                    } else {
                        fail(what + ": unknown line " + raw);
                    }
                }
                conn.ch.close();
            }
        } finally {
            Files.deleteIfExists(sock);
            Files.deleteIfExists(dir);
        }
    }

    private static final Pattern PLACEHOLDER = Pattern.compile("\\{\\{(worker|path:([^}]+)|digest:([^}]+))\\}\\}");

    /** Replaces {{worker}}, {{path:FILE}} and {{digest:FILE}} in every string. */
    private static Object substitute(Object v, String worker) {
        if (v instanceof String) {
            Matcher m = PLACEHOLDER.matcher((String) v);
            StringBuilder b = new StringBuilder();
            while (m.find()) {
                String rep;
                if (m.group(2) != null) {
                    rep = Conformance.plugin(m.group(2)).toString();
                } else if (m.group(3) != null) {
                    rep = Abi.digest(Conformance.pluginBytes(m.group(3)));
                } else {
                    rep = worker;
                }
                m.appendReplacement(b, Matcher.quoteReplacement(rep));
            }
            m.appendTail(b);
            return b.toString();
        }
        if (v instanceof Map) {
            Map<String, Object> out = new LinkedHashMap<>();
            for (Map.Entry<String, Object> e : obj(v).entrySet()) {
                out.put(e.getKey(), substitute(e.getValue(), worker));
            }
            return out;
        }
        if (v instanceof List) {
            List<Object> out = new ArrayList<>();
            for (Object e : Conformance.list(v)) {
                out.add(substitute(e, worker));
            }
            return out;
        }
        return v;
    }

    /** Null when got matches want (extra keys allowed, $any, $contains), else why not. */
    private static String match(Object want, Object got, String at) {
        if (want instanceof Map) {
            Map<String, Object> w = obj(want);
            if (w.containsKey("$any")) {
                return null;
            }
            if (w.containsKey("$contains")) {
                return got instanceof String && ((String) got).contains((String) w.get("$contains")) ? null
                        : at + ": " + Json.write(got) + " does not contain " + Json.quote((String) w.get("$contains"));
            }
            if (!(got instanceof Map)) {
                return at + ": not an object";
            }
            Map<String, Object> g = obj(got);
            for (Map.Entry<String, Object> e : w.entrySet()) {
                if (!g.containsKey(e.getKey())) {
                    return at + "." + e.getKey() + ": missing";
                }
                String m = match(e.getValue(), g.get(e.getKey()), at + "." + e.getKey());
                if (m != null) {
                    return m;
                }
            }
            return null;
        }
        if (want instanceof List<?> w) {
            if (!(got instanceof List<?> g) || g.size() != w.size()) {
                return at + ": want a list of " + w.size() + ", got " + Json.write(got);
            }
            for (int i = 0; i < w.size(); i++) {
                String m = match(w.get(i), g.get(i), at + "[" + i + "]");
                if (m != null) {
                    return m;
                }
            }
            return null;
        }
        if (want == null ? got == null : want.equals(got)) {
            return null;
        }
        return at + ": want " + Json.write(want) + ", got " + Json.write(got);
    }

    @org.junit.jupiter.api.Test
    void backoffDoublesToItsCap() {
        java.time.Duration lo = java.time.Duration.ofMillis(50);
        java.time.Duration hi = java.time.Duration.ofSeconds(2);
        java.time.Duration d = lo;
        List<Long> seen = new ArrayList<>();
        for (int i = 0; i < 8; i++) {
            d = Protocol.nextBackoff(d, lo, hi);
            seen.add(d.toMillis());
        }
        assertEquals(List.of(100L, 200L, 400L, 800L, 1600L, 2000L, 2000L, 2000L), seen);
    }
}
