package dev.hotload;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.sun.net.httpserver.HttpsConfigurator;
import com.sun.net.httpserver.HttpsServer;
import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * The protocol against the REAL hotload-sidecar (set HOTLOAD_SIDECAR_BIN; otherwise these tests
 * skip): artifacts over HTTPS with a CA made by the openssl CLI, loads through
 * {@code hotload-sidecar load}, the app's answers read back from /status and /ready.
 */
class SidecarTest {
    private static final HttpClient HTTP = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();

    private String bin;
    private Path dir;
    private Path state;
    private HttpsServer server;
    private final Map<String, byte[]> files = new ConcurrentHashMap<>();
    private final AtomicLong hits = new AtomicLong();
    private Sidecar car;
    private final List<AutoCloseable> cleanup = new ArrayList<>();

    @BeforeEach
    void setUp() throws Exception {
        bin = System.getenv("HOTLOAD_SIDECAR_BIN");
        Assumptions.assumeTrue(bin != null && !bin.isEmpty(),
                "HOTLOAD_SIDECAR_BIN is not set: skipping the tests against the real sidecar (make sdk-java sets it)");
        assertTrue(new File(bin).canExecute(), "HOTLOAD_SIDECAR_BIN=" + bin + " is not an executable");
        dir = Files.createTempDirectory(Path.of("/tmp"), "hl-java");
        state = dir.resolve("state");
        startArtifactServer();
        car = new Sidecar();
    }

    @AfterEach
    void tearDown() throws Exception {
        for (int i = cleanup.size() - 1; i >= 0; i--) {
            cleanup.get(i).close();
        }
        if (car != null) {
            car.kill();
        }
        if (server != null) {
            server.stop(0);
        }
        if (dir != null) {
            try (var walk = Files.walk(dir)) {
                walk.sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
            }
        }
    }

    private void openssl(String... args) throws Exception {
        List<String> cmd = new ArrayList<>();
        cmd.add("openssl");
        cmd.addAll(List.of(args));
        Process p = new ProcessBuilder(cmd).directory(dir.toFile()).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertEquals(0, p.waitFor(), "openssl " + String.join(" ", args) + ": " + out);
    }

    /** A CA and a leaf for 127.0.0.1 signed by it (rustls refuses a CA certificate as a leaf). */
    private void startArtifactServer() throws Exception {
        String[] ec = {"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"};
        List<String> ca = new ArrayList<>(List.of("req", "-x509"));
        ca.addAll(List.of(ec));
        ca.addAll(List.of("-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=hotload test CA"));
        openssl(ca.toArray(new String[0]));
        List<String> csr = new ArrayList<>(List.of("req"));
        csr.addAll(List.of(ec));
        csr.addAll(List.of("-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1"));
        openssl(csr.toArray(new String[0]));
        Files.writeString(dir.resolve("leaf.ext"),
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n");
        openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "leaf.pem", "-days", "1", "-extfile", "leaf.ext");
        openssl("pkcs12", "-export", "-inkey", "leaf.key", "-in", "leaf.pem", "-certfile", "ca.pem",
                "-out", "leaf.p12", "-passout", "pass:hotload");
        KeyStore ks = KeyStore.getInstance("PKCS12");
        try (InputStream in = Files.newInputStream(dir.resolve("leaf.p12"))) {
            ks.load(in, "hotload".toCharArray());
        }
        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        kmf.init(ks, "hotload".toCharArray());
        SSLContext ssl = SSLContext.getInstance("TLS");
        ssl.init(kmf.getKeyManagers(), null, null);
        server = HttpsServer.create(new InetSocketAddress("127.0.0.1", 0), 0);
        server.setHttpsConfigurator(new HttpsConfigurator(ssl));
        server.createContext("/", ex -> {
            byte[] body = files.get(ex.getRequestURI().getPath().substring(1));
            if (body == null) {
                ex.sendResponseHeaders(404, -1);
            } else {
                hits.incrementAndGet();
                ex.sendResponseHeaders(200, body.length);
                ex.getResponseBody().write(body);
            }
            ex.close();
        });
        server.start();
    }

    /** Publishes a conformance plugin; returns {url, digest}. */
    private String[] put(String file) {
        byte[] body = Conformance.pluginBytes(file);
        files.put(file, body);
        return new String[] {"https://127.0.0.1:" + server.getAddress().getPort() + "/" + file, Abi.digest(body)};
    }

    /** A running `hotload-sidecar run`. */
    private final class Sidecar {
        final Process proc;
        final String admin;

        Sidecar() throws Exception {
            ProcessBuilder pb = new ProcessBuilder(bin, "run", "--state-dir", state.toString(),
                    "--app-socket", state.resolve("app.sock").toString(), "--admin-addr", "127.0.0.1:0",
                    "--ca-bundle", dir.resolve("ca.pem").toString(), "--ack-timeout-ms", "20000",
                    "--attempts", "2", "--backoff-ms", "10");
            pb.environment().put("RUST_LOG", "warn");
            pb.redirectError(ProcessBuilder.Redirect.appendTo(dir.resolve("sidecar.log").toFile()));
            proc = pb.start();
            BufferedReader rd = new BufferedReader(new InputStreamReader(proc.getInputStream(), StandardCharsets.UTF_8));
            AtomicReference<String> first = new AtomicReference<>();
            Thread t = new Thread(() -> {
                try {
                    first.set(rd.readLine());
                    while (rd.readLine() != null) {
                        // drain
                    }
                } catch (IOException e) {
                    // the sidecar exited
                }
            }, "sidecar-stdout");
            t.setDaemon(true);
            t.start();
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
            while (first.get() == null && System.nanoTime() < deadline && proc.isAlive()) {
                Thread.sleep(20);
            }
            String a = null;
            if (first.get() != null) {
                for (String w : first.get().split("\\s+")) {
                    if (w.startsWith("admin=")) {
                        a = w.substring("admin=".length());
                    }
                }
            }
            if (a == null) {
                proc.destroyForcibly();
                fail("the sidecar did not announce admin= (printed " + first.get() + "); log: " + log());
            }
            admin = a;
        }

        void kill() throws InterruptedException {
            proc.destroyForcibly();
            proc.waitFor(10, TimeUnit.SECONDS);
        }

        HttpResponse<String> get(String path) throws Exception {
            return HTTP.send(HttpRequest.newBuilder(URI.create("http://" + admin + path)).timeout(Duration.ofSeconds(5)).build(),
                    HttpResponse.BodyHandlers.ofString());
        }

        String waitReady() throws Exception {
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
            while (true) {
                HttpResponse<String> r = get("/ready");
                if (r.statusCode() == 200) {
                    return r.body();
                }
                if (System.nanoTime() > deadline) {
                    fail("/ready stayed " + r.statusCode() + " (" + r.body() + ")");
                }
                Thread.sleep(20);
            }
        }

        /** Runs `hotload-sidecar load`; returns what it printed, plus "ok" (exit 0). */
        Map<String, Object> load(String plugin, String revision, String[] artifact) throws Exception {
            Process p = new ProcessBuilder(bin, "load", "--state-dir", state.toString(), "--plugin", plugin,
                    "--revision", revision, "--artifact", artifact[0], "--digest", artifact[1])
                    .redirectError(ProcessBuilder.Redirect.DISCARD).start();
            String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8).trim();
            if (!p.waitFor(60, TimeUnit.SECONDS)) {
                p.destroyForcibly();
                fail("hotload-sidecar load did not finish");
            }
            Map<String, Object> o;
            try {
                o = Conformance.obj(Json.parse(out));
            } catch (Json.ParseException e) {
                throw new AssertionError("load printed " + out + " (exit " + p.exitValue() + ")", e);
            }
            o.put("ok", p.exitValue() == 0);
            return o;
        }
    }

    private String log() {
        try {
            return Files.readString(dir.resolve("sidecar.log"));
        } catch (IOException e) {
            return "(no log)";
        }
    }

    /** One app process: a host, its hook recorder and its client on the sidecar's socket. */
    private final class Worker implements AutoCloseable {
        final Conformance.Recorder events = new Conformance.Recorder();
        final PluginHost host = new PluginHost(HostConfig.builder().callTimeout(Duration.ofSeconds(2)).hooks(events).build());
        final AppClient client;

        Worker(String id) {
            AppClient.Builder b = AppClient.builder(host).socket(state.resolve("app.sock").toString()).app("sdk-java-test");
            if (id != null) {
                b.worker(id);
            }
            client = b.start();
            cleanup.add(this);
        }

        String call(String input) throws Exception {
            return new String(host.call("auth", input.getBytes(StandardCharsets.UTF_8)), StandardCharsets.UTF_8);
        }

        String serving() {
            return host.serving("auth").map(RevisionId::revision).orElse(null);
        }

        @Override
        public void close() {
            client.close();
            host.close();
        }
    }

    private static void assertLoaded(Map<String, Object> o, String what) {
        assertTrue(Boolean.TRUE.equals(o.get("ok")) && "loaded".equals(o.get("result")), what + ": " + Json.write(o));
    }

    @Test
    void loadHundredSwapsUnderCallsRefusalAndRestart() throws Exception {
        Worker w = new Worker(null);
        String pid = Long.toString(ProcessHandle.current().pid());
        assertEquals(pid, w.client.worker(), "default worker id is the process id");
        String[] v1 = put("tagger-v1.wasm");
        String[] v2 = put("tagger-v2.wasm");

        Map<String, Object> o = car.load("auth", "r0", v1);
        assertLoaded(o, "first load");
        assertEquals(Boolean.TRUE, o.get("downloaded"), "first load downloads: " + Json.write(o));
        assertTrue(String.valueOf(o.get("health")).contains("self-check passed"), "health " + o.get("health"));
        car.waitReady();

        // Callers hammer the plugin while the sidecar swaps it 100 times.
        AtomicBoolean stop = new AtomicBoolean();
        AtomicLong calls = new AtomicLong();
        AtomicLong failed = new AtomicLong();
        AtomicReference<String> firstErr = new AtomicReference<>();
        Map<String, AtomicLong> perTag = new ConcurrentHashMap<>();
        List<Thread> callers = new ArrayList<>();
        for (int t = 0; t < 2; t++) {
            final int id = t;
            Thread th = new Thread(() -> {
                for (int i = 0; !stop.get(); i++) {
                    String in = "caller" + id + "-" + i;
                    String err = null;
                    try {
                        String tag = SwapTest.tagOf(w.call(in), in);
                        if (tag == null) {
                            err = "mixed response";
                        } else {
                            perTag.computeIfAbsent(tag, k -> new AtomicLong()).incrementAndGet();
                        }
                    } catch (Exception e) {
                        err = e.toString();
                    }
                    calls.incrementAndGet();
                    if (err != null) {
                        failed.incrementAndGet();
                        firstErr.compareAndSet(null, err);
                    }
                }
            });
            th.start();
            callers.add(th);
        }
        try {
            for (int n = 1; n <= 100; n++) {
                assertLoaded(car.load("auth", "s" + n, n % 2 == 0 ? v1 : v2), "swap " + n);
            }
        } finally {
            stop.set(true);
            for (Thread th : callers) {
                th.join();
            }
        }
        assertEquals(0, failed.get(), "failed or mixed calls of " + calls.get() + ", first: " + firstErr.get());
        assertTrue(perTag.containsKey("v01") && perTag.containsKey("v02"), "both revisions served: " + perTag);
        assertEquals("s100", w.serving());

        // Refusals name the worker and the precise reason; s100 keeps serving.
        String[][] faults = {
            {"self-check-status-7.wasm", "bad1", "plugin auth revision bad1: self-check failed: returned status 7"},
            {"self-check-loop.wasm", "bad2", "plugin auth revision bad2: self-check failed: deadline exceeded"},
            {"not-wasm.wasm", "bad3", "plugin auth revision bad3: invalid wasm"},
        };
        for (String[] f : faults) {
            Map<String, Object> r = car.load("auth", f[1], put(f[0]));
            String want = "app: worker " + pid + ": " + f[2];
            assertFalse(Boolean.TRUE.equals(r.get("ok")), f[0] + ": " + Json.write(r));
            assertEquals("failed", r.get("result"), f[0] + ": " + Json.write(r));
            assertTrue(String.valueOf(r.get("reason")).startsWith(want), f[0] + ": reason " + r.get("reason") + ", want " + want);
            assertEquals("s100", w.serving(), "after " + f[0]);
            assertEquals("v01:xv01:", w.call("x"), "after " + f[0]);
        }
        car.waitReady();

        // Sidecar crash and restart: the worker reconnects by itself and is offered the set from
        // the sidecar's disk (no download), answering without reloading.
        long before = hits.get();
        w.events.take();
        car.kill();
        car = new Sidecar();
        car.waitReady();
        assertEquals(before, hits.get(), "downloads after the restart");
        assertEquals(List.of(), w.events.take(), "the worker reloaded after the sidecar restart");
        assertEquals("s100", w.serving());
        String status = car.get("/status").body();
        assertTrue(status.contains("s100 loaded by 1/1 workers"), "status after the restart: " + status);
    }

    @Test
    void twoWorkersAreBothAcknowledged() throws Exception {
        Worker w1 = new Worker("w1");
        String[] v1 = put("tagger-v1.wasm");
        assertLoaded(car.load("auth", "r1", v1), "load with one worker");
        // A worker that connects later is offered the set at once and counts once it loaded.
        Worker w2 = new Worker("w2");
        // Ready may still be the one-worker verdict until w2 has connected: wait for 2/2.
        String status = car.get("/status").body();
        for (long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
                !status.contains("r1 loaded by 2/2 workers"); status = car.get("/status").body()) {
            assertTrue(System.nanoTime() < deadline, "status: " + status);
            Thread.sleep(20);
        }
        car.waitReady();
        for (Worker w : List.of(w1, w2)) {
            assertEquals("v01:xv01:", w.call("x"), "worker " + w.client.worker());
        }

        // A swap is loaded on the pod only when both workers loaded it.
        assertLoaded(car.load("auth", "r2", put("tagger-v2.wasm")), "swap");
        for (Worker w : List.of(w1, w2)) {
            assertEquals("r2", w.serving(), "worker " + w.client.worker());
        }
        status = car.get("/status").body();
        assertTrue(status.contains("r2 loaded by 2/2 workers"), "status: " + status);

        // A refusal fails the pod's load naming a worker; both keep r2.
        Map<String, Object> o = car.load("auth", "r3", put("self-check-trap.wasm"));
        String reason = String.valueOf(o.get("reason"));
        assertFalse(Boolean.TRUE.equals(o.get("ok")), Json.write(o));
        assertTrue((reason.startsWith("app: worker w1: ") || reason.startsWith("app: worker w2: "))
                && reason.contains("plugin auth revision r3: self-check failed: trap"), "refusal: " + reason);
        car.waitReady();
        for (Worker w : List.of(w1, w2)) {
            assertEquals("v02:xv02:", w.call("x"), "worker " + w.client.worker() + " after the refusal");
        }
    }

    /** A sample's value in Prometheus text (labels matched as given), or -1 when absent. */
    private static double metricValue(String text, String name, Map<String, String> labels) {
        for (String line : text.split("\n")) {
            if (line.startsWith("#") || !line.contains(" ")) {
                continue;
            }
            String series = line.substring(0, line.lastIndexOf(' '));
            int brace = series.indexOf('{');
            String metric = brace < 0 ? series : series.substring(0, brace);
            if (!metric.equals(name)) {
                continue;
            }
            Map<String, String> got = new java.util.HashMap<>();
            if (brace >= 0) {
                for (String pair : series.substring(brace + 1, series.length() - 1).split(",")) {
                    int eq = pair.indexOf('=');
                    if (eq > 0) {
                        got.put(pair.substring(0, eq), pair.substring(eq + 1).replace("\"", ""));
                    }
                }
            }
            if (labels.entrySet().stream().allMatch(e -> e.getValue().equals(got.get(e.getKey())))) {
                return Double.parseDouble(line.substring(line.lastIndexOf(' ') + 1));
            }
        }
        return -1;
    }

    /**
     * Two workers call a plugin, one marks a call failed, then both call a revision that traps:
     * the sidecar's /metrics shows the sum of both workers' health reports per revision, and
     * keeps showing it (reports are counts since the previous one, never re-sent).
     */
    @Test
    void twoWorkersHealthMergesOnTheSidecarsMetrics() throws Exception {
        Worker w1 = new Worker("w1");
        Worker w2 = new Worker("w2");
        assertLoaded(car.load("auth", "r1", put("tagger-v1.wasm")), "load r1");
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
        while (!car.get("/status").body().contains("r1 loaded by 2/2 workers")) {
            assertTrue(System.nanoTime() < deadline, "status: " + car.get("/status").body());
            Thread.sleep(20);
        }
        for (int i = 0; i < 5; i++) {
            assertEquals("v01:xv01:", w1.call("x"));
        }
        for (int i = 0; i < 3; i++) {
            assertEquals("v01:xv01:", w2.call("x"));
        }
        assertTrue(w1.host.markFailed("auth"));
        assertLoaded(car.load("auth", "r2", put("handle-trap.wasm")), "load r2");
        for (Worker w : List.of(w1, w1, w2)) {
            try {
                w.call("x");
                fail("a call to handle-trap succeeded");
            } catch (CallException e) {
                assertEquals(Failure.Kind.TRAP, e.failure().kind(), e.getMessage());
            }
        }
        Map<String, String> r1 = Map.of("plugin", "auth", "revision", "r1");
        Map<String, String> r2 = Map.of("plugin", "auth", "revision", "r2");
        List<Object[]> want = List.of(
                new Object[] {"hotload_plugin_calls_total", r1, 8.0},
                new Object[] {"hotload_plugin_errors_total", with(r1, "kind", "failed"), 1.0},
                new Object[] {"hotload_plugin_errors_total", with(r1, "kind", "trap"), 0.0},
                new Object[] {"hotload_plugin_call_duration_seconds_bucket", with(r1, "le", "+Inf"), 8.0},
                new Object[] {"hotload_plugin_call_duration_seconds_count", r1, 8.0},
                new Object[] {"hotload_plugin_calls_total", r2, 3.0},
                new Object[] {"hotload_plugin_errors_total", with(r2, "kind", "trap"), 3.0},
                new Object[] {"hotload_plugin_errors_total", with(r2, "kind", "timeout"), 0.0},
                new Object[] {"hotload_plugin_call_duration_seconds_count", r2, 3.0});
        deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(15);
        String wrong;
        while ((wrong = wrongMetrics(want)) != null) {
            assertTrue(System.nanoTime() < deadline, "/metrics never showed both workers' totals: " + wrong);
            Thread.sleep(100);
        }
        Thread.sleep(2500); // two more report intervals: nothing is counted twice
        wrong = wrongMetrics(want);
        assertTrue(wrong == null, "after two more intervals: " + wrong);
    }

    @SuppressWarnings("unchecked")
    private String wrongMetrics(List<Object[]> want) throws Exception {
        String text = car.get("/metrics").body();
        for (Object[] w : want) {
            double got = metricValue(text, (String) w[0], (Map<String, String>) w[1]);
            if (got != (double) w[2]) {
                return w[0] + "" + w[1] + " = " + got + ", want " + w[2] + "\n" + text;
            }
        }
        return null;
    }

    private static Map<String, String> with(Map<String, String> labels, String k, String v) {
        Map<String, String> m = new java.util.HashMap<>(labels);
        m.put(k, v);
        return m;
    }
}
