package hotload

// Unit tests of the pure parts: ABI checks, digests, fault classification, protocol lines,
// back-off.

import (
	"bufio"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tetratelabs/wazero/sys"
)

func TestPackRoundTripsIncludingHighBitPointers(t *testing.T) {
	for _, c := range [][2]uint32{{0, 0}, {1024, 5}, {^uint32(0), ^uint32(0)}, {0x8000_0000, 1}} {
		if p, l := Unpack(Pack(c[0], c[1])); p != c[0] || l != c[1] {
			t.Errorf("Unpack(Pack(%d, %d)) = %d, %d", c[0], c[1], p, l)
		}
	}
}

func minimalExports() map[string]exportKind {
	return map[string]exportKind{
		"memory": {memory: true},
		"alloc":  {sig: "(i32)->i32"},
		"handle": {sig: "(i32,i32)->i64"},
	}
}

func TestCheckExportsAcceptsMinimalAndReportsOptionalExports(t *testing.T) {
	caps, err := checkExports(minimalExports())
	if err != nil || caps != (capabilities{}) {
		t.Fatalf("minimal: %+v, %v", caps, err)
	}
	e := minimalExports()
	e["self_check"] = exportKind{sig: "()->i32"}
	e["restore_state"] = exportKind{sig: "(i32,i32)->i32"}
	caps, err = checkExports(e)
	if err != nil || !caps.selfCheck || !caps.restoreState || caps.saveState || caps.configure {
		t.Fatalf("optional: %+v, %v", caps, err)
	}
}

func TestCheckExportsNamesTheOffendingExport(t *testing.T) {
	cases := []struct {
		edit func(map[string]exportKind)
		want string
	}{
		{func(e map[string]exportKind) { delete(e, "handle") }, "missing export `handle` (i32,i32)->i64"},
		{func(e map[string]exportKind) { e["self_check"] = exportKind{sig: "()->i64"} }, "export `self_check` has signature ()->i64, want ()->i32"},
		{func(e map[string]exportKind) { delete(e, "memory") }, "missing export `memory` (memory)"},
		{func(e map[string]exportKind) { e["memory"] = exportKind{sig: "()->i32"} }, "export `memory` must be a memory, found Func(\"()->i32\")"},
		{func(e map[string]exportKind) { e["alloc"] = exportKind{memory: true} }, "export `alloc` must be a function (i32)->i32, found Memory"},
	}
	for _, c := range cases {
		e := minimalExports()
		c.edit(e)
		if _, err := checkExports(e); err == nil || err.Error() != c.want {
			t.Errorf("got %v, want %q", err, c.want)
		}
	}
}

func TestCheckedRangeRejectsOutOfBoundsAndOverflow(t *testing.T) {
	for _, c := range []struct {
		ptr, n uint32
		mem    uint64
		ok     bool
	}{{10, 5, 15, true}, {10, 6, 15, false}, {^uint32(0), ^uint32(0), 1 << 20, false}, {0, 0, 0, true}} {
		if got := checkedRange(c.ptr, c.n, c.mem); got != c.ok {
			t.Errorf("checkedRange(%d, %d, %d) = %v", c.ptr, c.n, c.mem, got)
		}
	}
}

func TestDigestForms(t *testing.T) {
	if got := Digest(nil); got != "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" {
		t.Errorf("Digest(empty) = %s", got)
	}
	ok := "sha256:" + strings.Repeat("a1", 32)
	if h, good := parseSHA256(ok); !good || h != ok[7:] {
		t.Errorf("parse %s", ok)
	}
	for _, bad := range []string{strings.ToUpper(ok), "sha256:abc", "sha512:" + strings.Repeat("a1", 32), ""} {
		if _, good := parseSHA256(bad); good {
			t.Errorf("parse accepted %q", bad)
		}
	}
}

func TestClassifyFindsFaultsThroughWrapping(t *testing.T) {
	cases := []struct {
		err  error
		want Failure
	}{
		{fmt.Errorf("%w (recovered by wazero)\nwasm stack trace:\n\t…", &memoryLimitError{10, 5}), Failure{Kind: FailMemoryLimit, Requested: 10, Limit: 5}},
		{sys.NewExitError(sys.ExitCodeDeadlineExceeded), Failure{Kind: FailTimeout}},
		{sys.NewExitError(sys.ExitCodeContextCanceled), Failure{Kind: FailCanceled}},
		{fmt.Errorf("x: %w", &sleepInterrupted{}), Failure{Kind: FailTimeout}},
		{sys.NewExitError(3), Failure{Kind: FailOther, Detail: "plugin exited with code 3"}},
		{errors.New("wasm error: unreachable\nwasm stack trace:\n\t.handle()"), Failure{Kind: FailTrap, Detail: "unreachable"}},
		{errors.New("start function[0] failed: wasm error: integer divide by zero"), Failure{Kind: FailTrap, Detail: "integer divide by zero"}},
		{errors.New("boom"), Failure{Kind: FailOther, Detail: "boom"}},
	}
	for _, c := range cases {
		if got := classify(c.err); got != c.want {
			t.Errorf("classify(%q) = %+v, want %+v", c.err, got, c.want)
		}
	}
}

func TestLoadErrorsReadLikeHotloadHost(t *testing.T) {
	cases := []struct {
		err  error
		want string
	}{
		{&LoadError{Kind: LoadSelfCheck, Plugin: "auth", Revision: "r2", Failure: &Failure{Kind: FailStatus, Status: 7}}, "plugin auth revision r2: self-check failed: returned status 7"},
		{&LoadError{Kind: LoadRestoreState, Plugin: "auth", Revision: "r2", Failure: &Failure{Kind: FailStatus, Status: 3}}, "plugin auth revision r2: restore-state failed: returned status 3"},
		{&LoadError{Kind: LoadSelfCheck, Plugin: "a", Revision: "r", Failure: &Failure{Kind: FailMemoryLimit, Requested: 20, Limit: 16}}, "plugin a revision r: self-check failed: memory limit exceeded: asked for 20 bytes, limit is 16 bytes"},
		{&LoadError{Kind: LoadTooManyPlugins, Plugin: "p", Max: 4}, "plugin p: cannot load more than 4 plugins"},
		{&CallError{Kind: CallHandle, Plugin: "p", Revision: "r", Failure: &Failure{Kind: FailTimeout}}, "plugin p revision r: handle failed: deadline exceeded (interrupted)"},
		{&CallError{Kind: CallBusy, Plugin: "p", Revision: "r", Waited: 2 * time.Second}, "plugin p revision r: no free instance within 2000 ms"},
	}
	for _, c := range cases {
		if c.err.Error() != c.want {
			t.Errorf("got %q, want %q", c.err, c.want)
		}
	}
	if !errors.Is(&CallError{Kind: CallNotLoaded, Plugin: "p"}, ErrNotLoaded) {
		t.Error("not_loaded is not ErrNotLoaded")
	}
}

func TestHelloIsV2AndNamesTheWorker(t *testing.T) {
	got := string(encodeLine(hello("checkout", "4711")))
	if want := `{"type":"hello","app":"checkout","worker":"4711","protocol":2}` + "\n"; got != want {
		t.Errorf("hello %q, want %q", got, want)
	}
	got = string(encodeLine(failedMessage{Type: "failed", Plugin: "p", Revision: "r", Reason: "trap"}))
	if want := `{"type":"failed","plugin":"p","revision":"r","reason":"trap"}` + "\n"; got != want {
		t.Errorf("failed %q, want %q", got, want)
	}
}

func TestParseSidecarLine(t *testing.T) {
	msg, err := parseSidecarLine([]byte(`{"type":"load","plugin":"auth","revision":"r2","path":"/s/b","digest":"sha256:00","config":{"k": 1}}`))
	if err != nil || msg.Plugin != "auth" || msg.Revision != "r2" || msg.Path != "/s/b" || string(configBytes(msg.Config)) != `{"k":1}` {
		t.Fatalf("load: %+v, %v", msg, err)
	}
	for _, bad := range []string{"hello?", "\xff\xfe", `{"type":"reboot"}`, `{"type":"load","plugin":"auth"}`, `{"type":"unload"}`, `[1]`} {
		if _, err := parseSidecarLine([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	if msg, err := parseSidecarLine([]byte(`{"type":"error","reason":"line 1: bad"}`)); err != nil || msg.Reason != "line 1: bad" {
		t.Errorf("error: %+v, %v", msg, err)
	}
}

func TestConfigBytesAreCompactJSONOrNothing(t *testing.T) {
	for raw, want := range map[string]string{"": "", "null": "", " null ": "", `{"a": [1, 2]}`: `{"a":[1,2]}`, `false`: `false`, `"s"`: `"s"`} {
		if got := string(configBytes([]byte(raw))); got != want {
			t.Errorf("configBytes(%q) = %q, want %q", raw, got, want)
		}
	}
}

func TestBackoffDoublesFrom50msTo2s(t *testing.T) {
	lo, hi := 50*time.Millisecond, 2*time.Second
	var got []time.Duration
	d := lo
	for range 8 {
		got = append(got, d)
		d = nextBackoff(d, lo, hi)
	}
	want := []time.Duration{50, 100, 200, 400, 800, 1600, 2000, 2000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("back-off %v, want %v ms", got, want)
		}
	}
}

func TestReadLineSkipsOverlongLinesAndStaysInStep(t *testing.T) {
	input := "short\n" + strings.Repeat("x", 300) + "\nnext\nlast"
	rd := bufio.NewReaderSize(strings.NewReader(input), 16)
	var got []string
	for {
		line, err := readLine(rd, 100)
		if errors.Is(err, errLineTooLong) {
			got = append(got, "<too long>")
			continue
		}
		if err != nil {
			break
		}
		got = append(got, string(line))
	}
	if strings.Join(got, "|") != "short|<too long>|next" {
		t.Errorf("lines %q", got)
	}
}

func TestTranscriptMatcher(t *testing.T) {
	want := map[string]any{"type": "failed", "reason": map[string]any{"$contains": "status 7"}, "health": map[string]any{"$any": true}}
	if err := match(want, map[string]any{"type": "failed", "reason": "returned status 7", "health": "x", "extra": 1.0}); err != nil {
		t.Errorf("should match: %v", err)
	}
	for _, got := range []map[string]any{
		{"type": "loaded", "reason": "returned status 7", "health": "x"},
		{"type": "failed", "reason": "returned status 8", "health": "x"},
		{"type": "failed", "reason": "returned status 7"},
	} {
		if err := match(want, got); err == nil {
			t.Errorf("matched %v", got)
		}
	}
}
