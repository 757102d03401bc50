// Command bench measures the Go SDK with the conformance taggers (docs/benchmarks.md, "App
// SDKs") and prints one JSON line:
//
//   - call_ns: ns per Host.Call of tagger-v1 with a 5-byte input, one goroutine, after
//     warm-up (median of the rounds' means);
//   - swap_ns: Loaded.Swap, the atomic pointer store alone, over alternating v1/v2 loads;
//   - load_cached_ms: Loaded.Total of those loads, every one a cache hit (the whole load:
//     digest, the compiled module (kept in the host's memory by digest since the first two
//     loads; Config.CacheDir is set too, for a module the host no longer keeps), 4 instances,
//     self-check, state hand-over, swap);
//   - p99 of single calls, steady and while another goroutine swaps v1↔v2 every ~10 ms.
//
// Run from sdk/go, after sdk/conformance/build.sh: go run ./bench
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	hotload "github.com/hotload-dev/hotload/sdk/go"
)

const (
	plugin      = "tagger"
	warmup      = 20_000
	rounds      = 7
	roundCalls  = 100_000
	loads       = 100
	p99Calls    = 20_000
	callSpacing = 50 * time.Microsecond
	swapEvery   = 10 * time.Millisecond
)

var input = []byte("hello")

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx := context.Background()
	dir := filepath.Join("..", "conformance", "plugins")
	var reqs [2]hotload.LoadRequest
	for i, name := range []string{"tagger-v1", "tagger-v2"} {
		wasm, err := os.ReadFile(filepath.Join(dir, name+".wasm"))
		if err != nil {
			return fmt.Errorf("%w (run sdk/conformance/build.sh first)", err)
		}
		reqs[i] = hotload.LoadRequest{Plugin: plugin, Revision: name, Digest: hotload.Digest(wasm), Wasm: wasm}
	}
	cacheDir, err := os.MkdirTemp("", "hotload-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(cacheDir)
	host, err := hotload.NewHost(ctx, hotload.Config{CacheDir: cacheDir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer host.Close(ctx)

	// The first load of each compiles and fills the cache; the timed ones below all hit it.
	for _, r := range []hotload.LoadRequest{reqs[0], reqs[1]} {
		if _, err := host.Load(ctx, r); err != nil {
			return err
		}
	}
	var swaps, totals []time.Duration
	hits := 0
	for i := 0; i < loads; i++ {
		l, err := host.Load(ctx, reqs[i%2])
		if err != nil {
			return err
		}
		if l.Cache == hotload.CacheHit {
			hits++
		}
		swaps = append(swaps, l.Swap)
		totals = append(totals, l.Total)
	}
	// loads is even: v2 serves now; v1 for the rest.
	if _, err := host.Load(ctx, reqs[0]); err != nil {
		return err
	}

	for i := 0; i < warmup; i++ {
		if _, err := host.Call(ctx, plugin, input); err != nil {
			return err
		}
	}
	means := make([]time.Duration, 0, rounds)
	for r := 0; r < rounds; r++ {
		t := time.Now()
		for i := 0; i < roundCalls; i++ {
			if _, err := host.Call(ctx, plugin, input); err != nil {
				return err
			}
		}
		means = append(means, time.Since(t)/roundCalls)
	}

	steady, err := latencies(ctx, host)
	if err != nil {
		return err
	}
	var stop atomic.Bool
	done := make(chan error, 1)
	var swapped int
	go func() {
		for i := 1; !stop.Load(); i++ {
			time.Sleep(swapEvery)
			if _, err := host.Load(ctx, reqs[i%2]); err != nil {
				done <- err
				return
			}
			swapped++
		}
		done <- nil
	}()
	during, err := latencies(ctx, host)
	stop.Store(true)
	if serr := <-done; err == nil {
		err = serr
	}
	if err != nil {
		return err
	}

	p99Steady, p99Swaps := pct(steady, 99), pct(during, 99)
	out := map[string]any{
		"sdk":                   "go",
		"runtime":               "wazero",
		"call_ns":               median(means).Nanoseconds(),
		"call_ns_rounds":        nanos(means),
		"swap_ns_median":        median(swaps).Nanoseconds(),
		"swap_ns_max":           slices.Max(swaps).Nanoseconds(),
		"load_cached_ms_median": ms(median(totals)),
		"load_cached_ms_p90":    ms(pct(totals, 90)),
		"loads":                 loads,
		"cache_hits":            hits,
		"calls":                 p99Calls,
		"p50_steady_us":         us(pct(steady, 50)),
		"p99_steady_us":         us(p99Steady),
		"p50_swaps_us":          us(pct(during, 50)),
		"p99_swaps_us":          us(p99Swaps),
		"swaps_during":          swapped,
		"p99_ratio":             float64(p99Swaps) / float64(p99Steady),
	}
	line, err := json.Marshal(out)
	if err != nil {
		return err
	}
	fmt.Println(string(line))
	return nil
}

// latencies times p99Calls single calls, one every callSpacing (the goroutine spins until
// the next call is due: time.Sleep is too coarse for 50 µs), so both runs take about a
// second and the swapping run spans about a hundred swaps.
func latencies(ctx context.Context, host *hotload.Host) ([]time.Duration, error) {
	lat := make([]time.Duration, 0, p99Calls)
	next := time.Now()
	for i := 0; i < p99Calls; i++ {
		for time.Now().Before(next) {
		}
		next = next.Add(callSpacing)
		t := time.Now()
		if _, err := host.Call(ctx, plugin, input); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(t))
	}
	return lat, nil
}

func pct(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

func median(d []time.Duration) time.Duration { return pct(d, 50) }

func nanos(d []time.Duration) []int64 {
	out := make([]int64, len(d))
	for i, v := range d {
		out[i] = v.Nanoseconds()
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }
func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
