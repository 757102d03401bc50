package hotload

// Protocol tests against the REAL hotload-sidecar binary (HOTLOAD_SIDECAR_BIN): a real HTTPS
// artifact server, the sidecar's `load` command, and Clients with their Hosts as the app's
// workers on the real Unix socket. Without HOTLOAD_SIDECAR_BIN they skip.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func sidecarBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("HOTLOAD_SIDECAR_BIN")
	if bin == "" {
		t.Skip("HOTLOAD_SIDECAR_BIN is not set: skipping the tests against the real sidecar (make sdk-go sets it)")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("HOTLOAD_SIDECAR_BIN=%s: %v", bin, err)
	}
	return bin
}

// artifactServer serves plugin files over HTTPS with a certificate from its own CA, and
// counts downloads.
type artifactServer struct {
	srv    *httptest.Server
	caFile string
	mu     sync.Mutex
	files  map[string][]byte
	hits   atomic.Int64
}

func startArtifactServer(t *testing.T, dir string) *artifactServer {
	t.Helper()
	caPEM, leaf := testPKI(t)
	a := &artifactServer{files: map[string][]byte{}, caFile: filepath.Join(dir, "ca.pem")}
	if err := os.WriteFile(a.caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	a.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		body, ok := a.files[strings.TrimPrefix(r.URL.Path, "/")]
		a.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		a.hits.Add(1)
		_, _ = w.Write(body)
	}))
	a.srv.TLS = &tls.Config{Certificates: []tls.Certificate{leaf}}
	a.srv.StartTLS()
	t.Cleanup(a.srv.Close)
	return a
}

// put publishes a conformance plugin and returns its URL and digest.
func (a *artifactServer) put(t *testing.T, file string) (url, digest string) {
	body := pluginFile(t, file)
	a.mu.Lock()
	a.files[file] = body
	a.mu.Unlock()
	return a.srv.URL + "/" + file, Digest(body)
}

// testPKI makes a CA and a server certificate for 127.0.0.1 it signed (rustls refuses a
// self-signed CA certificate used as the server's own, which httptest's default is).
func testPKI(t *testing.T) (caPEM []byte, leaf tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "hotload sdk test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		Subject:               pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}
}

// sidecar is a running hotload-sidecar.
type sidecar struct {
	bin, state, admin string
	cmd               *exec.Cmd
}

func startSidecar(t *testing.T, bin, state, caFile string) *sidecar {
	t.Helper()
	cmd := exec.Command(bin, "run",
		"--state-dir", state,
		"--app-socket", filepath.Join(state, "app.sock"),
		"--admin-addr", "127.0.0.1:0",
		"--ca-bundle", caFile,
		"--ack-timeout-ms", "20000",
		"--attempts", "2", "--backoff-ms", "10")
	cmd.Env = append(os.Environ(), "RUST_LOG=warn")
	logFile, err := os.OpenFile(filepath.Join(filepath.Dir(state), "sidecar.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logFile
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &sidecar{bin: bin, state: state, cmd: cmd}
	t.Cleanup(func() {
		s.kill()
		logFile.Close()
		if t.Failed() {
			log, _ := os.ReadFile(logFile.Name())
			t.Logf("sidecar log:\n%s", log)
		}
	})
	line := make(chan string, 1)
	go func() {
		rd := bufio.NewReader(stdout)
		l, _ := rd.ReadString('\n')
		line <- l
		_, _ = io.Copy(io.Discard, rd)
	}()
	select {
	case l := <-line:
		for _, w := range strings.Fields(l) {
			if a, ok := strings.CutPrefix(w, "admin="); ok {
				s.admin = a
			}
		}
		if s.admin == "" {
			t.Fatalf("sidecar printed %q, no admin=", l)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the sidecar did not announce itself")
	}
	return s
}

func (s *sidecar) kill() {
	if s.cmd.ProcessState == nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
	}
}

func (s *sidecar) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + s.admin + path)
	if err != nil {
		t.Fatalf("admin %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// waitReady polls /ready until it answers want.
func (s *sidecar) waitReady(t *testing.T, want int) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body := s.get(t, "/ready")
		if code == want {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("/ready stayed %d (%s), want %d", code, body, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// outcome is what `hotload-sidecar load` prints.
type outcome struct {
	Result     string `json:"result"`
	Revision   string `json:"revision"`
	Reason     string `json:"reason"`
	Health     string `json:"health"`
	Downloaded *bool  `json:"downloaded"`
	ok         bool
}

// load runs `hotload-sidecar load` and returns what it printed.
func (s *sidecar) load(t *testing.T, plugin, revision, url, digest string) outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.bin, "load", "--state-dir", s.state,
		"--plugin", plugin, "--revision", revision, "--artifact", url, "--digest", digest)
	out, err := cmd.Output()
	var o outcome
	if jerr := json.Unmarshal(bytes.TrimSpace(out), &o); jerr != nil {
		t.Fatalf("load printed %q (%v): %v", out, err, jerr)
	}
	o.ok = err == nil
	return o
}

// worker is one app process: a Host and its Client, connected to the sidecar.
type worker struct {
	host   *Host
	client *Client
	events *recorder
	stop   context.CancelFunc
	done   chan error
	once   sync.Once
}

func startWorker(t *testing.T, socket, id string, cfg Config) *worker {
	t.Helper()
	w := &worker{events: &recorder{}, done: make(chan error, 1)}
	cfg.Hooks = w.events
	cfg.Logger = quietLogger()
	w.host = newTestHost(t, cfg)
	w.client = NewClient(w.host, ClientConfig{Socket: socket, App: "sdk-go-test", Worker: id, Logger: quietLogger()})
	ctx, cancel := context.WithCancel(context.Background())
	w.stop = cancel
	go func() { w.done <- w.client.Run(ctx) }()
	t.Cleanup(w.close)
	return w
}

// close disconnects the worker (as a process exit would) and waits for its Client.
func (w *worker) close() {
	w.once.Do(func() {
		w.stop()
		<-w.done
	})
}

type sidecarEnv struct {
	bin    string
	dir    string
	state  string
	server *artifactServer
	car    *sidecar
}

func newSidecarEnv(t *testing.T) *sidecarEnv {
	bin := sidecarBin(t)
	dir := t.TempDir()
	e := &sidecarEnv{bin: bin, dir: dir, state: filepath.Join(dir, "state")}
	e.server = startArtifactServer(t, dir)
	e.car = startSidecar(t, bin, e.state, e.server.caFile)
	return e
}

func (e *sidecarEnv) socket() string { return filepath.Join(e.state, "app.sock") }

func TestSidecarLoadHundredSwapsUnderCallsFaultsAndRestart(t *testing.T) {
	e := newSidecarEnv(t)
	ctx := context.Background()
	// Generous deadlines: the machine may be busy, and these tests are not about deadlines.
	w := startWorker(t, e.socket(), "", Config{CallTimeout: 2 * time.Second})
	pid := strconv.Itoa(os.Getpid())
	if w.client.Worker() != pid {
		t.Fatalf("default worker id %q, want the process id %s", w.client.Worker(), pid)
	}
	v1URL, v1 := e.server.put(t, "tagger-v1.wasm")
	v2URL, v2 := e.server.put(t, "tagger-v2.wasm")

	o := e.car.load(t, "auth", "r0", v1URL, v1)
	if !o.ok || o.Result != "loaded" || o.Downloaded == nil || !*o.Downloaded {
		t.Fatalf("first load: %+v", o)
	}
	if !strings.Contains(o.Health, "self-check passed") {
		t.Errorf("health %q", o.Health)
	}
	e.car.waitReady(t, 200)

	// Callers hammer the plugin while the sidecar swaps it 100 times.
	var stop atomic.Bool
	var calls, failed atomic.Int64
	var perTag sync.Map
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for n := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load() && i < 5_000_000; i++ {
				input := []byte(fmt.Sprintf("caller%d-%d", n, i))
				out, err := w.host.Call(ctx, "auth", input)
				if err == nil {
					var tag string
					var body []byte
					if tag, body, err = tagOf(out); err == nil && !bytes.Equal(body, input) {
						err = fmt.Errorf("body mismatch %q", out)
					}
					if err == nil {
						c, _ := perTag.LoadOrStore(tag, new(atomic.Int64))
						c.(*atomic.Int64).Add(1)
					}
				}
				calls.Add(1)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		}()
	}
	start := time.Now()
	for n := 1; n <= 100; n++ {
		url, digest := v2URL, v2
		if n%2 == 0 {
			url, digest = v1URL, v1
		}
		if o := e.car.load(t, "auth", "s"+strconv.Itoa(n), url, digest); !o.ok || o.Result != "loaded" {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("swap %d: %+v", n, o)
		}
	}
	swapTime := time.Since(start)
	stop.Store(true)
	wg.Wait()
	count := func(tag string) int64 {
		if c, ok := perTag.Load(tag); ok {
			return c.(*atomic.Int64).Load()
		}
		return 0
	}
	t.Logf("100 swaps through the sidecar in %v; %d calls (%d v01, %d v02), %d failed", swapTime, calls.Load(), count("v01"), count("v02"), failed.Load())
	if failed.Load() != 0 {
		t.Fatalf("%d calls failed or were mixed, first: %v", failed.Load(), firstErr.Load())
	}
	if count("v01") == 0 || count("v02") == 0 {
		t.Errorf("both versions should have served")
	}
	if id, _ := w.host.Serving("auth"); id.Revision != "s100" {
		t.Fatalf("serving %q, want s100", id.Revision)
	}

	// Faults: refused with the precise reason, naming the worker; s100 keeps serving.
	for _, c := range []struct{ file, rev, reason string }{
		{"self-check-status-7.wasm", "bad1", "plugin auth revision bad1: self-check failed: returned status 7"},
		{"self-check-loop.wasm", "bad2", "plugin auth revision bad2: self-check failed: deadline exceeded"},
		{"not-wasm.wasm", "bad3", "plugin auth revision bad3: invalid wasm"},
	} {
		url, digest := e.server.put(t, c.file)
		o := e.car.load(t, "auth", c.rev, url, digest)
		want := "app: worker " + pid + ": " + c.reason
		if o.ok || o.Result != "failed" || !strings.HasPrefix(o.Reason, want) {
			t.Errorf("%s: %+v, want failed with %q", c.file, o, want)
		}
		if id, _ := w.host.Serving("auth"); id.Revision != "s100" {
			t.Fatalf("after %s: serving %q, want s100", c.file, id.Revision)
		}
		if out, err := w.host.Call(ctx, "auth", []byte("x")); err != nil || string(out) != "v01:xv01:" {
			t.Fatalf("after %s: %q, %v", c.file, out, err)
		}
	}
	e.car.waitReady(t, 200)

	// Sidecar crash and restart: the worker reconnects by itself, is offered the set from
	// the sidecar's disk (no download) and answers without reloading.
	hits := e.server.hits.Load()
	w.events.take()
	e.car.kill()
	e.car = startSidecar(t, e.bin, e.state, e.server.caFile)
	e.car.waitReady(t, 200)
	if got := e.server.hits.Load(); got != hits {
		t.Errorf("%d downloads after the restart", got-hits)
	}
	if ev := w.events.take(); len(ev) != 0 {
		t.Errorf("the worker reloaded after the sidecar restart: %q", ev)
	}
	if id, _ := w.host.Serving("auth"); id.Revision != "s100" {
		t.Errorf("after the restart: serving %q, want s100", id.Revision)
	}
	_, status := e.car.get(t, "/status")
	if !strings.Contains(status, "s100 loaded by 1/1 workers") {
		t.Errorf("status after the restart: %s", status)
	}
}

func TestSidecarTwoWorkersAreBothAcknowledged(t *testing.T) {
	e := newSidecarEnv(t)
	ctx := context.Background()
	w1 := startWorker(t, e.socket(), "w1", Config{CallTimeout: 2 * time.Second})
	v1URL, v1 := e.server.put(t, "tagger-v1.wasm")
	if o := e.car.load(t, "auth", "r1", v1URL, v1); !o.ok {
		t.Fatalf("load with one worker: %+v", o)
	}
	// A worker that connects later is offered the set at once and counts once it loaded.
	w2 := startWorker(t, e.socket(), "w2", Config{CallTimeout: 2 * time.Second})
	// Ready may still be the one-worker verdict until w2 has connected: wait for 2/2.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		_, status := e.car.get(t, "/status")
		if strings.Contains(status, "r1 loaded by 2/2 workers") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status: %s", status)
		}
	}
	e.car.waitReady(t, 200)
	for _, w := range []*worker{w1, w2} {
		if out, err := w.host.Call(ctx, "auth", []byte("x")); err != nil || string(out) != "v01:xv01:" {
			t.Fatalf("worker %s: %q, %v", w.client.Worker(), out, err)
		}
	}

	// A swap is loaded on the pod only when both workers loaded it.
	v2URL, v2 := e.server.put(t, "tagger-v2.wasm")
	if o := e.car.load(t, "auth", "r2", v2URL, v2); !o.ok || o.Result != "loaded" {
		t.Fatalf("swap: %+v", o)
	}
	for _, w := range []*worker{w1, w2} {
		if id, _ := w.host.Serving("auth"); id.Revision != "r2" {
			t.Fatalf("worker %s serves %q, want r2", w.client.Worker(), id.Revision)
		}
	}

	// A refusal fails the pod's load naming a worker; both keep r2.
	badURL, bad := e.server.put(t, "self-check-trap.wasm")
	o := e.car.load(t, "auth", "r3", badURL, bad)
	if o.ok || !(strings.HasPrefix(o.Reason, "app: worker w1: ") || strings.HasPrefix(o.Reason, "app: worker w2: ")) ||
		!strings.Contains(o.Reason, "plugin auth revision r3: self-check failed: trap") {
		t.Fatalf("refusal: %+v", o)
	}
	e.car.waitReady(t, 200)
	for _, w := range []*worker{w1, w2} {
		if out, err := w.host.Call(ctx, "auth", []byte("x")); err != nil || string(out) != "v02:xv02:" {
			t.Fatalf("worker %s after the refusal: %q, %v", w.client.Worker(), out, err)
		}
	}

	// A worker that leaves leaves the set: the other alone is enough again.
	w2.close()
	body := e.car.waitReady(t, 200)
	v1again := e.car.load(t, "auth", "r4", v1URL, v1)
	if !v1again.ok {
		t.Fatalf("load with w2 gone: %+v (ready: %s)", v1again, body)
	}
	if id, _ := w1.host.Serving("auth"); id.Revision != "r4" {
		t.Fatalf("w1 serves %q, want r4", id.Revision)
	}
}

// metric is one sample of the sidecar's /metrics: its name and labels.
type metric struct {
	name   string
	labels map[string]string
}

// metricValue reads a sample's value from Prometheus text (absent: -1).
func metricValue(text string, want metric) float64 {
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		series, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		name, labels, _ := strings.Cut(strings.TrimSuffix(series, "}"), "{")
		if name != want.name {
			continue
		}
		got := map[string]string{}
		for _, pair := range strings.Split(labels, ",") {
			if k, v, ok := strings.Cut(pair, "="); ok {
				got[k] = strings.Trim(v, `"`)
			}
		}
		match := true
		for k, v := range want.labels {
			match = match && got[k] == v
		}
		if match {
			f, err := strconv.ParseFloat(strings.Fields(value)[0], 64)
			if err != nil {
				return -1
			}
			return f
		}
	}
	return -1
}

// Two workers call a plugin, one marks a call failed, then both call a revision that traps:
// the sidecar's /metrics shows the sum of both workers' health reports per revision, and
// keeps showing it (reports are counts since the previous one, never re-sent).
func TestSidecarMetricsMergeTwoWorkersHealth(t *testing.T) {
	e := newSidecarEnv(t)
	ctx := context.Background()
	w1 := startWorker(t, e.socket(), "w1", Config{CallTimeout: 2 * time.Second})
	w2 := startWorker(t, e.socket(), "w2", Config{CallTimeout: 2 * time.Second})
	v1URL, v1 := e.server.put(t, "tagger-v1.wasm")
	if o := e.car.load(t, "h", "r1", v1URL, v1); !o.ok {
		t.Fatalf("load r1: %+v", o)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		_, status := e.car.get(t, "/status")
		if strings.Contains(status, "r1 loaded by 2/2 workers") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status: %s", status)
		}
	}
	calls := map[*worker]int{w1: 5, w2: 3}
	for w, n := range calls {
		for range n {
			if _, err := w.host.Call(ctx, "h", []byte("x")); err != nil {
				t.Fatalf("worker %s: %v", w.client.Worker(), err)
			}
		}
	}
	w1.host.MarkFailed("h")
	trapURL, trap := e.server.put(t, "handle-trap.wasm")
	if o := e.car.load(t, "h", "r2", trapURL, trap); !o.ok {
		t.Fatalf("load r2: %+v", o)
	}
	traps := map[*worker]int{w1: 2, w2: 1}
	for w, n := range traps {
		for range n {
			if _, err := w.host.Call(ctx, "h", []byte("x")); err == nil {
				t.Fatalf("worker %s: a call to handle-trap succeeded", w.client.Worker())
			}
		}
	}

	r1 := map[string]string{"plugin": "h", "revision": "r1"}
	r2 := map[string]string{"plugin": "h", "revision": "r2"}
	with := func(l map[string]string, k, v string) map[string]string {
		out := map[string]string{k: v}
		for a, b := range l {
			out[a] = b
		}
		return out
	}
	want := []struct {
		m     metric
		value float64
	}{
		{metric{"hotload_plugin_calls_total", r1}, 8},
		{metric{"hotload_plugin_errors_total", with(r1, "kind", "failed")}, 1},
		{metric{"hotload_plugin_errors_total", with(r1, "kind", "trap")}, 0},
		{metric{"hotload_plugin_call_duration_seconds_bucket", with(r1, "le", "+Inf")}, 8},
		{metric{"hotload_plugin_call_duration_seconds_count", r1}, 8},
		{metric{"hotload_plugin_calls_total", r2}, 3},
		{metric{"hotload_plugin_errors_total", with(r2, "kind", "trap")}, 3},
		{metric{"hotload_plugin_errors_total", with(r2, "kind", "timeout")}, 0},
		{metric{"hotload_plugin_call_duration_seconds_count", r2}, 3},
	}
	check := func() (string, bool) {
		_, text := e.car.get(t, "/metrics")
		for _, w := range want {
			if got := metricValue(text, w.m); got != w.value {
				return fmt.Sprintf("%s%v = %v, want %v\n%s", w.m.name, w.m.labels, got, w.value, text), false
			}
		}
		return text, true
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		msg, ok := check()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics never showed both workers' totals: %s", msg)
		}
	}
	// Two more report intervals: nothing is counted twice.
	time.Sleep(2*HealthInterval + 500*time.Millisecond)
	if msg, ok := check(); !ok {
		t.Fatalf("after two more intervals: %s", msg)
	}
}
