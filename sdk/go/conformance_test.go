package hotload

// Runs the shared conformance cases (sdk/conformance/cases.json, described in its README)
// against this host: every SDK runs the same file from its own test runner.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const conformanceDir = "../conformance"

type hostSettings struct {
	MaxMemoryBytes       *uint64 `json:"max_memory_bytes"`
	CallTimeoutMs        *int    `json:"call_timeout_ms"`
	InstancesPerRevision *int    `json:"instances_per_revision"`
	CheckoutTimeoutMs    *int    `json:"checkout_timeout_ms"`
	MaxPlugins           *int    `json:"max_plugins"`
}

// over returns s with the fields o sets replaced.
func (s hostSettings) over(o hostSettings) hostSettings {
	if o.MaxMemoryBytes != nil {
		s.MaxMemoryBytes = o.MaxMemoryBytes
	}
	if o.CallTimeoutMs != nil {
		s.CallTimeoutMs = o.CallTimeoutMs
	}
	if o.InstancesPerRevision != nil {
		s.InstancesPerRevision = o.InstancesPerRevision
	}
	if o.CheckoutTimeoutMs != nil {
		s.CheckoutTimeoutMs = o.CheckoutTimeoutMs
	}
	if o.MaxPlugins != nil {
		s.MaxPlugins = o.MaxPlugins
	}
	return s
}

func (s hostSettings) config() Config {
	var c Config
	if s.MaxMemoryBytes != nil {
		c.MaxMemoryBytes = *s.MaxMemoryBytes
	}
	if s.CallTimeoutMs != nil {
		c.CallTimeout = time.Duration(*s.CallTimeoutMs) * time.Millisecond
	}
	if s.InstancesPerRevision != nil {
		c.InstancesPerRevision = *s.InstancesPerRevision
	}
	if s.CheckoutTimeoutMs != nil {
		c.CheckoutTimeout = time.Duration(*s.CheckoutTimeoutMs) * time.Millisecond
	}
	if s.MaxPlugins != nil {
		c.MaxPlugins = *s.MaxPlugins
	}
	return c
}

type conformanceSuite struct {
	Format int               `json:"format"`
	Host   hostSettings      `json:"host"`
	Cases  []conformanceCase `json:"cases"`
}

type conformanceCase struct {
	Name   string       `json:"name"`
	Checks string       `json:"checks"`
	Host   hostSettings `json:"host"`
	Steps  []step       `json:"steps"`
}

type step struct {
	Load *struct {
		Plugin   string  `json:"plugin"`
		Revision string  `json:"revision"`
		File     string  `json:"file"`
		Config   string  `json:"config"`
		Digest   *string `json:"digest"`
		DigestOf string  `json:"digest_of"`
	} `json:"load"`
	Call *struct {
		Plugin string `json:"plugin"`
		bytesIn
	} `json:"call"`
	CallPinned *struct {
		Pin string `json:"pin"`
		bytesIn
	} `json:"call_pinned"`
	Pin *struct {
		Plugin string `json:"plugin"`
		As     string `json:"as"`
	} `json:"pin"`
	Release *struct {
		Pin string `json:"pin"`
	} `json:"release"`
	MarkFailed *struct {
		Plugin string `json:"plugin"`
		Pin    string `json:"pin"`
	} `json:"mark_failed"`
	Health  *struct{}   `json:"health"`
	Unload  *pluginRef  `json:"unload"`
	Serving *pluginRef  `json:"serving"`
	Plugins *struct{}   `json:"plugins"`
	Events  *struct{}   `json:"events"`
	Repeat  int         `json:"repeat"`
	MaxMs   int         `json:"max_ms"`
	Expect  expectation `json:"expect"`
}

type pluginRef struct {
	Plugin string `json:"plugin"`
}

type bytesIn struct {
	Input    *string `json:"input"`
	InputB64 *string `json:"input_b64"`
}

func (b bytesIn) bytes(t *testing.T) []byte {
	t.Helper()
	switch {
	case b.InputB64 != nil:
		out, err := base64.StdEncoding.DecodeString(*b.InputB64)
		if err != nil {
			t.Fatalf("input_b64: %v", err)
		}
		return out
	case b.Input != nil:
		return []byte(*b.Input)
	}
	t.Fatal("step has neither input nor input_b64")
	return nil
}

type expectation struct {
	Swapped     *bool           `json:"swapped"`
	SelfChecked *bool           `json:"self_checked"`
	StateBytes  json.RawMessage `json:"state_bytes"`
	Output      *string         `json:"output"`
	OutputB64   *string         `json:"output_b64"`
	Error       *expectedError  `json:"error"`
	Revision    json.RawMessage `json:"revision"`
	Names       *[]string       `json:"names"`
	WasLoaded   *bool           `json:"was_loaded"`
	Events      *[]string       `json:"events"`
	Reports     *[]healthReport `json:"reports"`
}

// healthReport is what a `health` step expects of one revision's drained counts.
type healthReport struct {
	Plugin         string       `json:"plugin"`
	Revision       string       `json:"revision"`
	Calls          uint64       `json:"calls"`
	Errors         HealthErrors `json:"errors"`
	LatencyAtLeast *struct {
		Ms    int    `json:"ms"`
		Calls uint64 `json:"calls"`
	} `json:"latency_at_least"`
}

type expectedError struct {
	Kind   json.RawMessage `json:"kind"`
	Fault  string          `json:"fault"`
	Reason []string        `json:"reason"`
}

func loadSuite(t *testing.T) conformanceSuite {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(conformanceDir, "cases.json"))
	if err != nil {
		t.Fatalf("read cases: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var s conformanceSuite
	if err := dec.Decode(&s); err != nil {
		t.Fatalf("cases.json: %v", err)
	}
	if s.Format != 1 {
		t.Fatalf("cases.json format %d, this runner reads 1", s.Format)
	}
	return s
}

func pluginFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(conformanceDir, "plugins", name))
	if err != nil {
		t.Fatalf("plugin file: %v", err)
	}
	return b
}

// recorder writes hook events in the form cases.json compares.
type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, s)
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.events
	r.events = nil
	return out
}

func (r *recorder) BeforeUnload(e UnloadEvent) {
	r.add(fmt.Sprintf("before_unload %s %s next=%s", e.Plugin, e.Revision, e.Next))
}

func (r *recorder) AfterLoad(e LoadEvent) {
	r.add(fmt.Sprintf("after_load %s %s previous=%s", e.Plugin, e.Revision, e.Previous))
}

func (r *recorder) LoadFailed(plugin, revision string, err error) {
	kind := "?"
	var le *LoadError
	if errors.As(err, &le) {
		kind = string(le.Kind)
	}
	r.add(fmt.Sprintf("load_failed %s %s %s", plugin, revision, kind))
}

func TestConformance(t *testing.T) {
	suite := loadSuite(t)
	if len(suite.Cases) == 0 {
		t.Fatal("no cases")
	}
	for _, c := range suite.Cases {
		t.Run(c.Name, func(t *testing.T) {
			runCase(t, suite.Host.over(c.Host), c)
		})
	}
}

func runCase(t *testing.T, settings hostSettings, c conformanceCase) {
	ctx := context.Background()
	rec := &recorder{}
	cfg := settings.config()
	cfg.Hooks = rec
	cfg.Logger = quietLogger()
	h, err := NewHost(ctx, cfg)
	if err != nil {
		t.Fatalf("host: %v", err)
	}
	defer h.Close(ctx)
	pins := map[string]*Pinned{}
	for i, s := range c.Steps {
		for n := range max(s.Repeat, 1) {
			where := fmt.Sprintf("%s step %d", c.Name, i+1)
			if s.Repeat > 1 {
				where += fmt.Sprintf(" (repeat %d)", n+1)
			}
			start := time.Now()
			runStep(t, ctx, h, rec, pins, s, where)
			if took := time.Since(start); s.MaxMs > 0 && took > time.Duration(s.MaxMs)*time.Millisecond {
				t.Errorf("%s: took %v, bound %d ms", where, took, s.MaxMs)
			}
		}
	}
	for _, p := range pins {
		p.Release()
	}
}

func runStep(t *testing.T, ctx context.Context, h *Host, rec *recorder, pins map[string]*Pinned, s step, where string) {
	t.Helper()
	x := s.Expect
	switch {
	case s.Load != nil:
		l := s.Load
		wasm := pluginFile(t, l.File)
		digest := Digest(wasm)
		if l.DigestOf != "" {
			digest = Digest(pluginFile(t, l.DigestOf))
		}
		if l.Digest != nil {
			digest = *l.Digest
		}
		loaded, err := h.Load(ctx, LoadRequest{Plugin: l.Plugin, Revision: l.Revision, Digest: digest, Config: []byte(l.Config), Wasm: wasm})
		if checkError(t, where, err, x.Error) {
			return
		}
		if x.Swapped != nil && loaded.Swapped != *x.Swapped {
			t.Errorf("%s: swapped %v, want %v", where, loaded.Swapped, *x.Swapped)
		}
		if x.SelfChecked != nil && loaded.SelfChecked != *x.SelfChecked {
			t.Errorf("%s: self_checked %v, want %v", where, loaded.SelfChecked, *x.SelfChecked)
		}
		if x.StateBytes != nil {
			var want *int
			if err := json.Unmarshal(x.StateBytes, &want); err != nil {
				t.Fatalf("%s: state_bytes: %v", where, err)
			}
			got := loaded.State
			if (want == nil) != !got.Restored || (want != nil && *want != got.Bytes) {
				t.Errorf("%s: state %v, want %s", where, got, x.StateBytes)
			}
		}
	case s.Call != nil:
		out, err := h.Call(ctx, s.Call.Plugin, s.Call.bytes(t))
		checkOutput(t, where, out, err, x)
	case s.CallPinned != nil:
		p := pins[s.CallPinned.Pin]
		if p == nil {
			t.Fatalf("%s: no pin %q", where, s.CallPinned.Pin)
		}
		out, err := p.Call(ctx, s.CallPinned.bytes(t))
		checkOutput(t, where, out, err, x)
	case s.Pin != nil:
		p, err := h.Pin(s.Pin.Plugin)
		if checkError(t, where, err, x.Error) {
			return
		}
		pins[s.Pin.As] = p
		checkRevision(t, where, p.Revision().Revision, true, x.Revision)
	case s.Release != nil:
		if p := pins[s.Release.Pin]; p != nil {
			p.Release()
			delete(pins, s.Release.Pin)
		}
	case s.Unload != nil:
		was := h.Unload(s.Unload.Plugin)
		if x.WasLoaded != nil && was != *x.WasLoaded {
			t.Errorf("%s: unload reported %v, want %v", where, was, *x.WasLoaded)
		}
	case s.Serving != nil:
		id, ok := h.Serving(s.Serving.Plugin)
		checkRevision(t, where, id.Revision, ok, x.Revision)
	case s.Plugins != nil:
		got := h.Plugins()
		if x.Names != nil && !slices.Equal(got, *x.Names) && !(len(got) == 0 && len(*x.Names) == 0) {
			t.Errorf("%s: plugins %q, want %q", where, got, *x.Names)
		}
	case s.MarkFailed != nil:
		if s.MarkFailed.Pin != "" {
			p := pins[s.MarkFailed.Pin]
			if p == nil {
				t.Fatalf("%s: no pin %q", where, s.MarkFailed.Pin)
			}
			p.MarkFailed()
		} else if !h.MarkFailed(s.MarkFailed.Plugin) {
			t.Errorf("%s: mark_failed: %s serves nothing", where, s.MarkFailed.Plugin)
		}
	case s.Health != nil:
		checkHealth(t, where, h.TakeHealth(), x.Reports)
	case s.Events != nil:
		got := rec.take()
		if x.Events != nil && !slices.Equal(got, *x.Events) {
			t.Errorf("%s: events\n got %q\nwant %q", where, got, *x.Events)
		}
	default:
		t.Fatalf("%s: step without an operation", where)
	}
}

func checkRevision(t *testing.T, where, got string, ok bool, want json.RawMessage) {
	t.Helper()
	if want == nil {
		return
	}
	var w *string
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatalf("%s: revision: %v", where, err)
	}
	switch {
	case w == nil && ok:
		t.Errorf("%s: revision %q serves, want none", where, got)
	case w != nil && (!ok || got != *w):
		t.Errorf("%s: revision %q (serving %v), want %q", where, got, ok, *w)
	}
}

func checkOutput(t *testing.T, where string, out []byte, err error, x expectation) {
	t.Helper()
	if checkError(t, where, err, x.Error) {
		return
	}
	var want []byte
	switch {
	case x.OutputB64 != nil:
		want, _ = base64.StdEncoding.DecodeString(*x.OutputB64)
	case x.Output != nil:
		want = []byte(*x.Output)
	default:
		return
	}
	if !bytes.Equal(out, want) {
		t.Errorf("%s: output %q, want %q", where, out, want)
	}
}

// checkError compares err with the expected error; it returns true when the step is over
// (an error was expected, or one came unexpectedly).
func checkError(t *testing.T, where string, err error, want *expectedError) bool {
	t.Helper()
	if want == nil {
		if err != nil {
			t.Errorf("%s: unexpected error: %v", where, err)
			return true
		}
		return false
	}
	if err == nil {
		t.Errorf("%s: succeeded, want a %s error", where, want.Kind)
		return true
	}
	kind, fault := errorKind(err)
	var kinds []string
	if err := json.Unmarshal(want.Kind, &kinds); err != nil {
		var one string
		if err := json.Unmarshal(want.Kind, &one); err != nil {
			t.Fatalf("%s: error.kind is neither a string nor a list", where)
		}
		kinds = []string{one}
	}
	if !slices.Contains(kinds, kind) {
		t.Errorf("%s: error kind %q, want %q: %v", where, kind, kinds, err)
	}
	if want.Fault != "" && fault != want.Fault {
		t.Errorf("%s: fault %q, want %q: %v", where, fault, want.Fault, err)
	}
	for _, part := range want.Reason {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("%s: reason %q lacks %q", where, err.Error(), part)
		}
	}
	return true
}

// errorKind names an error in the conformance vocabulary.
func errorKind(err error) (kind, fault string) {
	var le *LoadError
	if errors.As(err, &le) {
		if le.Failure != nil {
			fault = string(le.Failure.Kind)
		}
		return string(le.Kind), fault
	}
	var ce *CallError
	if errors.As(err, &ce) {
		if ce.Failure != nil {
			fault = string(ce.Failure.Kind)
		}
		return string(ce.Kind), fault
	}
	return "unclassified", ""
}

// checkHealth compares drained counts with a `health` step's reports: the same revisions in
// order, exact calls and errors, 20 latency buckets that add up to the calls, and at least
// latency_at_least.calls of them in the buckets of latency_at_least.ms or slower.
func checkHealth(t *testing.T, where string, got []PluginHealth, want *[]healthReport) {
	t.Helper()
	if want == nil {
		return
	}
	if len(got) != len(*want) {
		t.Errorf("%s: health has %d reports, want %d: %+v", where, len(got), len(*want), got)
		return
	}
	for i, w := range *want {
		g := got[i]
		if g.Plugin != w.Plugin || g.Revision != w.Revision {
			t.Errorf("%s: report %d is %s %s, want %s %s", where, i, g.Plugin, g.Revision, w.Plugin, w.Revision)
			continue
		}
		if g.Calls != w.Calls || g.Errors != w.Errors {
			t.Errorf("%s: %s %s: calls %d errors %+v, want calls %d errors %+v", where, g.Plugin, g.Revision, g.Calls, g.Errors, w.Calls, w.Errors)
		}
		var timed uint64
		for _, n := range g.LatencyMicros {
			timed += n
		}
		if timed != g.Calls {
			t.Errorf("%s: %s %s: latency buckets hold %d calls of %d: %v", where, g.Plugin, g.Revision, timed, g.Calls, g.LatencyMicros)
		}
		if a := w.LatencyAtLeast; a != nil {
			var slow uint64
			for _, n := range g.LatencyMicros[LatencyBucket(time.Duration(a.Ms)*time.Millisecond):] {
				slow += n
			}
			if slow < a.Calls {
				t.Errorf("%s: %s %s: %d calls at %d ms or slower, want at least %d: %v", where, g.Plugin, g.Revision, slow, a.Ms, a.Calls, g.LatencyMicros)
			}
		}
	}
}
