package hotload

// Health counts: the bucket function, the classification of call failures, busy calls,
// concurrent calls and takes, and the report's JSON shape.

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLatencyBucketsFollowTheDocumentedBounds(t *testing.T) {
	us := func(n int64) time.Duration { return time.Duration(n) * time.Microsecond }
	cases := []struct {
		d    time.Duration
		want int
	}{
		{0, 0}, {us(10), 0}, {us(10) + 999, 0}, {us(11), 1}, {us(20), 1}, {us(21), 2},
		{time.Millisecond, 6}, {time.Millisecond + time.Microsecond, 7}, {3 * time.Millisecond, 8},
		{time.Second, 15}, {10 * time.Second, 18}, {10*time.Second + time.Microsecond, 19},
		{time.Hour, 19}, {-time.Second, 0},
	}
	for _, c := range cases {
		if got := LatencyBucket(c.d); got != c.want {
			t.Errorf("LatencyBucket(%v) = %d, want %d", c.d, got, c.want)
		}
	}
	for i, bound := range LatencyBoundsMicros {
		if got := LatencyBucket(us(int64(bound))); got != i {
			t.Errorf("a call of exactly %d µs is in bucket %d, want %d", bound, got, i)
		}
	}
}

func TestHealthReportIsTheProtocolsJSON(t *testing.T) {
	h := newTestHost(t, Config{})
	ctx := context.Background()
	if _, err := h.Load(ctx, request("auth", "r2", pluginFile(t, "tagger-v1.wasm"))); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Call(ctx, "auth", []byte("x")); err != nil {
		t.Fatal(err)
	}
	h.MarkFailed("auth")
	line := string(encodeLine(healthMessage{Type: "health", Plugins: h.TakeHealth()}))
	want := `{"type":"health","plugins":[{"plugin":"auth","revision":"r2","calls":1,"errors":{"trap":0,"timeout":0,"memory":0,"failed":1},"latency_us":[`
	if !strings.HasPrefix(line, want) {
		t.Fatalf("health line %s\nwant it to start %s", line, want)
	}
	var msg struct {
		Plugins []struct {
			Latency []uint64 `json:"latency_us"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(line), &msg); err != nil {
		t.Fatal(err)
	}
	if n := len(msg.Plugins[0].Latency); n != LatencyBuckets {
		t.Fatalf("latency_us has %d entries, want %d", n, LatencyBuckets)
	}
}

// A call that finds no free instance within CheckoutTimeout counts as failed, with its wait
// as its latency; the call that held the instance and ran past its deadline as timeout.
func TestBusyCallsCountAsFailed(t *testing.T) {
	h := newTestHost(t, Config{InstancesPerRevision: 1, CallTimeout: 400 * time.Millisecond, CheckoutTimeout: 100 * time.Millisecond})
	ctx := context.Background()
	if _, err := h.Load(ctx, request("slow", "r1", pluginFile(t, "handle-loop.wasm"))); err != nil {
		t.Fatal(err)
	}
	holding := make(chan error, 1)
	go func() {
		_, err := h.Call(ctx, "slow", []byte("x"))
		holding <- err
	}()
	// Wait until the first call holds the only instance.
	for h.slot("slow").current.Load().idleCount() != 0 {
		time.Sleep(time.Millisecond)
	}
	_, err := h.Call(ctx, "slow", []byte("y"))
	if kind, _ := errorKind(err); kind != string(CallBusy) {
		t.Fatalf("second call: %v, want busy", err)
	}
	if kind, fault := errorKind(<-holding); kind != string(CallHandle) || fault != string(FailTimeout) {
		t.Fatalf("first call: %s %s, want a handle timeout", kind, fault)
	}
	got := h.TakeHealth()
	if len(got) != 1 || got[0].Calls != 2 || got[0].Errors != (HealthErrors{Timeout: 1, Failed: 1}) {
		t.Fatalf("health %+v, want 2 calls: 1 timeout, 1 failed", got)
	}
	if slow := got[0].LatencyMicros[LatencyBucket(100*time.Millisecond):]; sum(slow) != 2 {
		t.Fatalf("latency %v: both calls took 100 ms or more", got[0].LatencyMicros)
	}
}

func TestHealthClassifiesCallErrorsAsHotloadHost(t *testing.T) {
	handle := func(k FailureKind) error {
		return &CallError{Kind: CallHandle, Failure: &Failure{Kind: k}}
	}
	cases := []struct {
		err  error
		want healthKind
	}{
		{nil, healthOK},
		{handle(FailTrap), healthTrap},
		{handle(FailBadRange), healthTrap},
		{handle(FailOther), healthTrap},
		{handle(FailTimeout), healthTimeout},
		{handle(FailMemoryLimit), healthMemory},
		{handle(FailCanceled), healthFailed},
		{&CallError{Kind: CallBusy}, healthFailed},
		{&CallError{Kind: CallReinstantiate, Failure: &Failure{Kind: FailTrap}}, healthFailed},
		{context.Canceled, healthFailed},
	}
	for _, c := range cases {
		if got := healthKindOf(c.err); got != c.want {
			t.Errorf("healthKindOf(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}

// Calls with swaps and takes at once, then calls with marks and takes at once: the reports
// add up to every call made and every mark, and no report has more failed calls than calls.
// (A mark counts once a later report has a call to hold it: each caller calls on after it
// marks, on the same revision, so every mark is reported.)
func TestHealthAddsUpUnderConcurrentCallsSwapsAndTakes(t *testing.T) {
	h := newTestHost(t, Config{CallTimeout: 5 * time.Second})
	ctx := context.Background()
	wasm := pluginFile(t, "tagger-v1.wasm")
	if _, err := h.Load(ctx, request("auth", "r0", wasm)); err != nil {
		t.Fatal(err)
	}
	const callers, perCaller = 4, 100
	var mu sync.Mutex
	var reports []PluginHealth
	take := func() {
		r := h.TakeHealth()
		mu.Lock()
		reports = append(reports, r...)
		mu.Unlock()
	}
	phase := func(mark bool, alongside func()) {
		var wg sync.WaitGroup
		for range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range perCaller {
					if _, err := h.Call(ctx, "auth", []byte("x")); err != nil {
						t.Error(err)
						return
					}
					if mark && i%10 == 0 {
						h.MarkFailed("auth")
					}
				}
			}()
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		for {
			select {
			case <-done:
				return
			default:
				alongside()
			}
		}
	}
	swaps := 0
	phase(false, func() {
		swaps++
		if _, err := h.Load(ctx, request("auth", fmt.Sprintf("r%d", swaps%3), wasm)); err != nil {
			t.Error(err)
		}
		take()
	})
	phase(true, take)
	take()
	var calls, failed uint64
	for _, r := range reports {
		if r.Errors.Total() > r.Calls {
			t.Errorf("report with %d failed calls of %d: %+v", r.Errors.Total(), r.Calls, r)
		}
		if sum(r.LatencyMicros[:]) != r.Calls {
			t.Errorf("latency buckets hold %d calls of %d", sum(r.LatencyMicros[:]), r.Calls)
		}
		calls += r.Calls
		failed += r.Errors.Failed
	}
	if calls != 2*callers*perCaller || failed != callers*perCaller/10 {
		t.Fatalf("reports add up to %d calls, %d failed; want %d, %d (%d swaps)", calls, failed, 2*callers*perCaller, callers*perCaller/10, swaps)
	}
}

func sum(xs []uint64) uint64 {
	var n uint64
	for _, x := range xs {
		n += x
	}
	return n
}
