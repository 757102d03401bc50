package hotload

// What a load reuses: compiled modules kept by digest, linear memories of closed instances
// (zeroed), and the most recently used instance of a pool.

import (
	"bytes"
	"context"
	"encoding/binary"
	"maps"
	"testing"
)

func TestARevisionLoadedAgainComesFromMemory(t *testing.T) {
	ctx := context.Background()
	h := newTestHost(t, Config{})
	v1, v2 := pluginFile(t, "tagger-v1.wasm"), pluginFile(t, "tagger-v2.wasm")
	for i, want := range []CacheOutcome{CacheNone, CacheNone, CacheHit, CacheHit, CacheHit} {
		wasm := [][]byte{v1, v2}[i%2]
		l, err := h.Load(ctx, request("p", "r"+string(rune('1'+i%2)), wasm))
		if err != nil {
			t.Fatal(err)
		}
		if l.Cache != want {
			t.Errorf("load %d: cache %s, want %s", i, l.Cache, want)
		}
	}
	// v1 serves; v2 is kept for the next swap back.
	want := map[string]int{Digest(v1): 1, Digest(v2): 0}
	if got := h.modules.digests(); !maps.Equal(got, want) {
		t.Fatalf("kept %v, want %v", got, want)
	}
	if out, err := h.Call(ctx, "p", []byte("x")); err != nil || string(out) != "v01:xv01:" {
		t.Fatalf("call: %q, %v", out, err)
	}
}

func TestUnusedCompiledModulesAreEvictedLeastRecentlyUsedFirst(t *testing.T) {
	ctx := context.Background()
	h := newTestHost(t, Config{ModuleCacheEntries: 1})
	v1, v2, echo := pluginFile(t, "tagger-v1.wasm"), pluginFile(t, "tagger-v2.wasm"), pluginFile(t, "echo-config.wasm")
	for _, r := range []LoadRequest{request("p", "r1", v1), request("p", "r2", v2), request("p", "r3", echo)} {
		if _, err := h.Load(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	// Two unused (v1, v2), one allowed: v1 went, the least recently used.
	want := map[string]int{Digest(v2): 0, Digest(echo): 1}
	if got := h.modules.digests(); !maps.Equal(got, want) {
		t.Fatalf("kept %v, want %v", got, want)
	}
	l, err := h.Load(ctx, request("p", "r1", v1))
	if err != nil || l.Cache != CacheNone {
		t.Fatalf("v1 again: %+v, %v; want compiled again", l, err)
	}
	// Now v2 was the least recently used of the two unused.
	want = map[string]int{Digest(v1): 1, Digest(echo): 0}
	if got := h.modules.digests(); !maps.Equal(got, want) {
		t.Fatalf("kept %v, want %v", got, want)
	}
	if l, err := h.Load(ctx, request("p", "r3", echo)); err != nil || l.Cache != CacheHit {
		t.Fatalf("echo-config again: %+v, %v; want a hit", l, err)
	}
}

func TestModulesInUseAreKeptWhateverTheBounds(t *testing.T) {
	ctx := context.Background()
	for _, cfg := range []Config{{ModuleCacheEntries: -1}, {ModuleCacheBytes: 1}} {
		h := newTestHost(t, cfg)
		v1, v2 := pluginFile(t, "tagger-v1.wasm"), pluginFile(t, "tagger-v2.wasm")
		// One module under two plugin names: one entry, two users.
		for _, r := range []LoadRequest{request("a", "r1", v1), request("b", "r1", v1)} {
			if _, err := h.Load(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		if got, want := h.modules.digests(), map[string]int{Digest(v1): 2}; !maps.Equal(got, want) {
			t.Fatalf("%+v: kept %v, want %v", cfg, got, want)
		}
		pin, err := h.Pin("a")
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range []LoadRequest{request("a", "r2", v2), request("b", "r2", v2)} {
			if _, err := h.Load(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		// The pin still runs on v1's code.
		if got, want := h.modules.digests(), map[string]int{Digest(v1): 1, Digest(v2): 2}; !maps.Equal(got, want) {
			t.Fatalf("%+v: kept %v, want %v", cfg, got, want)
		}
		if out, err := pin.Call(ctx, []byte("x")); err != nil || string(out) != "v01:xv01:" {
			t.Fatalf("pinned call: %q, %v", out, err)
		}
		pin.Release()
		if got, want := h.modules.digests(), map[string]int{Digest(v2): 2}; !maps.Equal(got, want) {
			t.Fatalf("%+v: kept %v after the pin went, want %v", cfg, got, want)
		}
		if l, err := h.Load(ctx, request("a", "r1", v1)); err != nil || l.Cache != CacheNone {
			t.Fatalf("%+v: v1 again: %+v, %v; want compiled again", cfg, l, err)
		}
	}
}

func TestALoadAfterCloseFailsAsBefore(t *testing.T) {
	ctx := context.Background()
	h := newTestHost(t, Config{})
	v1 := pluginFile(t, "tagger-v1.wasm")
	if _, err := h.Load(ctx, request("p", "r1", v1)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Load(ctx, request("p", "r2", pluginFile(t, "tagger-v2.wasm"))); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// v1 was kept in memory; the closed runtime refuses it all the same.
	_, err := h.Load(ctx, request("p", "r1", v1))
	if kind, _ := errorKind(err); kind != string(LoadInvalidWasm) {
		t.Fatalf("load after close: %v, want invalid wasm (runtime closed)", err)
	}
}

// A memory handed to a new instance is zero wherever the new module did not write, even
// when it is a buffer another module wrote all over.
func TestAReusedMemoryStartsZero(t *testing.T) {
	ctx := context.Background()
	h := newTestHost(t, Config{})
	// echo-config keeps its config at 4096, inputs at 8192, answers at 65536; 2 pages, as
	// the tagger's memory.
	secret := bytes.Repeat([]byte("secret"), 100)
	r := request("p", "r1", pluginFile(t, "echo-config.wasm"))
	r.Config = secret
	if _, err := h.Load(ctx, r); err != nil {
		t.Fatal(err)
	}
	for range 8 {
		if _, err := h.Call(ctx, "p", secret); err != nil {
			t.Fatal(err)
		}
	}
	// r2's instances are made before r1's go; r3's get r1's memories.
	for _, r := range []LoadRequest{request("p", "r2", pluginFile(t, "tagger-v1.wasm")), request("p", "r3", pluginFile(t, "tagger-v2.wasm"))} {
		if _, err := h.Load(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	rev := h.slot("p").current.Load()
	rev.mu.Lock()
	defer rev.mu.Unlock()
	for _, inst := range rev.idle {
		mem, ok := inst.mem.Read(0, inst.mem.Size())
		if !ok || len(mem) != 2*65536 {
			t.Fatalf("memory of %d bytes", len(mem))
		}
		// The tagger's data segment ("v02:" at 0) and nothing else: its self-check reads,
		// and the state handed over is a count of 0 (4 zero bytes).
		if !bytes.Equal(mem[:4], []byte("v02:")) {
			t.Fatalf("data segment %q", mem[:4])
		}
		if i := bytes.IndexFunc(mem[4:], func(r rune) bool { return r != 0 }); i >= 0 {
			t.Fatalf("byte %d of a new instance's memory is %q", 4+i, mem[4+i])
		}
	}
}

func TestFreedMemoriesAreReusedZeroed(t *testing.T) {
	pool := &memoryPool{}
	const page = 65536
	reused := false
	// sync.Pool may drop what it is given (always under the race detector, at random);
	// a few rounds see a reuse.
	for range 50 {
		a := &limitedMemory{limit: 8 * page, pool: pool}
		buf := a.Reallocate(page)
		for i := range buf {
			buf[i] = 0xff
		}
		// Grown within the doubled capacity: the new bytes were never written.
		buf = a.Reallocate(2 * page)
		for i := range page + 100 {
			buf[i] = 0xee
		}
		first := &buf[0]
		a.Free()
		b := &limitedMemory{limit: 8 * page, pool: pool}
		got := b.Reallocate(2 * page)
		if len(got) != 2*page || cap(got) != 2*page {
			t.Fatalf("len %d cap %d", len(got), cap(got))
		}
		if i := bytes.IndexFunc(got, func(r rune) bool { return r != 0 }); i >= 0 {
			t.Fatalf("byte %d of a reused memory is %#x", i, got[i])
		}
		if &got[0] == first {
			reused = true
			break
		}
	}
	if !reused {
		t.Fatal("no freed memory was reused")
	}
	// A closed pool keeps nothing.
	pool.close()
	a := &limitedMemory{limit: 8 * page, pool: pool}
	a.Reallocate(page)
	a.Free()
	if got := pool.get(page); got != nil {
		t.Fatal("a closed pool handed a buffer out")
	}
}

// Calls one at a time keep using one instance (the tagger's empty input answers how many
// requests the instance that serves it has handled).
func TestCallsOneAtATimeUseTheMostRecentlyReturnedInstance(t *testing.T) {
	ctx := context.Background()
	h := newTestHost(t, Config{InstancesPerRevision: 4})
	if _, err := h.Load(ctx, request("p", "r1", pluginFile(t, "tagger-v1.wasm"))); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := h.Call(ctx, "p", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	out, err := h.Call(ctx, "p", nil)
	if err != nil || len(out) != 4 {
		t.Fatalf("count: %q, %v", out, err)
	}
	if n := binary.LittleEndian.Uint32(out); n != 10 {
		t.Fatalf("the serving instance handled %d of 10 calls", n)
	}
}
