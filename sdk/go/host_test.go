package hotload

// The host under concurrency: swaps under calls, pinned requests, revisions freed when their
// last reference goes, the compilation cache on disk, cancellation.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func request(plugin, revision string, wasm []byte) LoadRequest {
	return LoadRequest{Plugin: plugin, Revision: revision, Digest: Digest(wasm), Wasm: wasm}
}

// tagOf splits a tagger response into its tag and body, or fails when the two tags differ
// (a response mixed from two versions).
func tagOf(out []byte) (tag string, body []byte, err error) {
	if len(out) < 8 || !bytes.Equal(out[:4], out[len(out)-4:]) {
		return "", nil, fmt.Errorf("mixed response %q", out)
	}
	return string(out[:3]), out[4 : len(out)-4], nil
}

func newTestHost(t testing.TB, cfg Config) *Host {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	h, err := NewHost(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close(context.Background()) })
	return h
}

func TestHundredSwapsUnderConcurrentCallsFailNoCall(t *testing.T) {
	ctx := context.Background()
	// Deadlines are wall-clock and this machine is shared with builds: be generous, this
	// test is about swaps, not deadlines.
	h := newTestHost(t, Config{CallTimeout: 5 * time.Second, CacheDir: t.TempDir()})
	versions := [][]byte{pluginFile(t, "tagger-v1.wasm"), pluginFile(t, "tagger-v2.wasm")}
	if _, err := h.Load(ctx, request("auth", "r0", versions[0])); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var perTag [2]atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for n := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load() && i < 5_000_000; i++ {
				input := []byte("caller" + strconv.Itoa(n) + "-request" + strconv.Itoa(i) + string(bytes.Repeat([]byte{'x'}, i%64)))
				out, err := h.Call(ctx, "auth", input)
				if err != nil {
					errs <- err
					return
				}
				tag, body, err := tagOf(out)
				if err == nil && !bytes.Equal(body, input) {
					err = fmt.Errorf("body mismatch: %q", out)
				}
				if err != nil {
					errs <- err
					return
				}
				switch tag {
				case "v01":
					perTag[0].Add(1)
				case "v02":
					perTag[1].Add(1)
				default:
					errs <- fmt.Errorf("unknown tag %q", tag)
					return
				}
			}
		}()
	}
	start := time.Now()
	var worst time.Duration
	for n := 1; n <= 100; n++ {
		loaded, err := h.Load(ctx, request("auth", "r"+strconv.Itoa(n), versions[n%2]))
		if err != nil {
			t.Fatalf("swap %d: %v", n, err)
		}
		if !loaded.Swapped {
			t.Fatalf("swap %d did not swap", n)
		}
		worst = max(worst, loaded.Swap)
		time.Sleep(2 * time.Millisecond)
		if time.Since(start) > 2*time.Minute {
			t.Fatal("swap loop over its time bound")
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a call failed: %v", err)
	}
	a, b := perTag[0].Load(), perTag[1].Load()
	t.Logf("100 swaps, %d calls (%d v01, %d v02), worst swap critical section %v", a+b, a, b, worst)
	if a == 0 || b == 0 {
		t.Errorf("both versions should have served: v01=%d v02=%d", a, b)
	}
	if id, _ := h.Serving("auth"); id.Revision != "r100" {
		t.Errorf("serving %q, want r100", id.Revision)
	}
}

func TestEveryPinnedRequestRunsOnOneRevisionWhileSwapsLand(t *testing.T) {
	ctx := context.Background()
	h := newTestHost(t, Config{CallTimeout: 5 * time.Second})
	versions := [][]byte{pluginFile(t, "tagger-v1.wasm"), pluginFile(t, "tagger-v2.wasm")}
	if _, err := h.Load(ctx, request("auth", "r0", versions[0])); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var crossed atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	oneRequest := func(input []byte, pause bool) error {
		p, err := h.Pin("auth")
		if err != nil {
			return err
		}
		defer p.Release()
		first, err := p.Call(ctx, input)
		if err != nil {
			return err
		}
		if pause {
			time.Sleep(200 * time.Microsecond)
		}
		if id, _ := h.Serving("auth"); id.Revision != p.Revision().Revision {
			crossed.Add(1)
		}
		second, err := p.Call(ctx, input)
		if err != nil {
			return err
		}
		t1, _, err1 := tagOf(first)
		t2, _, err2 := tagOf(second)
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		// Revision rN serves v01 for even N, v02 for odd N.
		n, _ := strconv.Atoi(p.Revision().Revision[1:])
		want := []string{"v01", "v02"}[n%2]
		if t1 != want || t2 != want {
			return fmt.Errorf("request straddled: %s then %s on pinned %s", t1, t2, p.Revision().Revision)
		}
		return nil
	}
	for n := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load() && i < 5_000_000; i++ {
				if err := oneRequest([]byte(fmt.Sprintf("caller%d-request%d", n, i)), i%4 == 0); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for n := 1; n <= 100; n++ {
		if _, err := h.Load(ctx, request("auth", "r"+strconv.Itoa(n), versions[n%2])); err != nil {
			t.Fatalf("swap %d: %v", n, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a request failed: %v", err)
	}
	t.Logf("%d requests saw a swap land between their two calls", crossed.Load())
}

func TestARevisionIsClosedWhenItsLastReferenceGoes(t *testing.T) {
	ctx := context.Background()
	h := newTestHost(t, Config{InstancesPerRevision: 2})
	if _, err := h.Load(ctx, request("auth", "r1", pluginFile(t, "tagger-v1.wasm"))); err != nil {
		t.Fatal(err)
	}
	r1 := h.slot("auth").current.Load()
	pin, err := h.Pin("auth")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Load(ctx, request("auth", "r2", pluginFile(t, "tagger-v2.wasm"))); err != nil {
		t.Fatal(err)
	}
	if got := r1.refs.Load(); got != 1 {
		t.Fatalf("r1 holds %d references after the swap, want 1 (the pin)", got)
	}
	if out, err := pin.Call(ctx, []byte("x")); err != nil || string(out) != "v01:xv01:" {
		t.Fatalf("pinned call: %q, %v", out, err)
	}
	pin.Release()
	pin.Release() // a second release is harmless
	if got := r1.refs.Load(); got != 0 {
		t.Fatalf("r1 holds %d references, want 0", got)
	}
	if n := r1.idleCount(); n != 0 {
		t.Fatalf("r1 kept %d idle instances after its last reference went", n)
	}
	if r1.acquire() {
		t.Fatal("a closed revision was acquired again")
	}
	if _, err := pin.Call(ctx, []byte("x")); !errors.Is(err, ErrPinReleased) {
		t.Fatalf("call through a released pin: %v", err)
	}
	if out, err := h.Call(ctx, "auth", []byte("x")); err != nil || string(out) != "v02:xv02:" {
		t.Fatalf("call: %q, %v", out, err)
	}
}

func TestCompiledCodeIsReusedFromTheCacheDirectory(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	wasm := pluginFile(t, "tagger-v1.wasm")
	first, err := newTestHost(t, Config{CacheDir: dir}).Load(ctx, request("p", "r1", wasm))
	if err != nil {
		t.Fatal(err)
	}
	if first.Cache != CacheMiss {
		t.Errorf("first load: cache %s, want miss", first.Cache)
	}
	second, err := newTestHost(t, Config{CacheDir: dir}).Load(ctx, request("p", "r1", wasm))
	if err != nil {
		t.Fatal(err)
	}
	if second.Cache != CacheHit {
		t.Errorf("second host: cache %s, want hit", second.Cache)
	}
	t.Logf("compile %v, cached load %v", first.Compile, second.Compile)
	none, err := newTestHost(t, Config{}).Load(ctx, request("p", "r1", wasm))
	if err != nil || none.Cache != CacheNone {
		t.Errorf("without a cache directory: %+v, %v", none, err)
	}
}

func TestTheCallersContextInterruptsACall(t *testing.T) {
	h := newTestHost(t, Config{CallTimeout: 30 * time.Second, InstancesPerRevision: 1})
	if _, err := h.Load(context.Background(), request("slow", "r1", pluginFile(t, "handle-loop.wasm"))); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := h.Call(ctx, "slow", []byte("x"))
	var ce *CallError
	if !errors.As(err, &ce) || ce.Failure == nil || ce.Failure.Kind != FailTimeout {
		t.Fatalf("got %v, want a timeout", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("interrupted after %v", took)
	}
	// The interrupted instance was replaced: the plugin still takes calls.
	ctx, cancel2 := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel2)
	_, err = h.Call(ctx, "slow", []byte("x"))
	if !errors.As(err, &ce) || ce.Failure == nil || ce.Failure.Kind != FailCanceled {
		t.Fatalf("got %v, want canceled", err)
	}
}

func TestConcurrentLoadsOfOnePluginAreSerialised(t *testing.T) {
	ctx := context.Background()
	h := newTestHost(t, Config{})
	versions := [][]byte{pluginFile(t, "tagger-v1.wasm"), pluginFile(t, "tagger-v2.wasm")}
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for n := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := h.Load(ctx, request("auth", "r"+strconv.Itoa(n), versions[n%2])); err != nil {
				errs <- err
			}
			if n%5 == 4 {
				h.Unload("auth")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("load: %v", err)
	}
	if _, err := h.Load(ctx, request("auth", "final", versions[0])); err != nil {
		t.Fatal(err)
	}
	if out, err := h.Call(ctx, "auth", []byte("x")); err != nil || string(out) != "v01:xv01:" {
		t.Fatalf("call: %q, %v", out, err)
	}
}
