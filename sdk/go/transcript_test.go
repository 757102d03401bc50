package hotload

// Replays the shared protocol transcripts (sdk/conformance/transcripts/*.jsonl) against a
// Client: the test plays the sidecar on a real Unix socket, the Client and its Host are the
// app under test.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

type transcriptStep struct {
	Comment              string         `json:"comment"`
	AppSends             map[string]any `json:"app_sends"`
	SidecarSends         map[string]any `json:"sidecar_sends"`
	SidecarSendsRaw      *string        `json:"sidecar_sends_raw"`
	SidecarSendsB64      *string        `json:"sidecar_sends_b64"`
	SidecarSendsLongLine int            `json:"sidecar_sends_long_line"`
	DropConnection       bool           `json:"drop_connection"`
	AppSilentMs          int            `json:"app_silent_ms"`
	Call                 *struct {
		Plugin string `json:"plugin"`
		bytesIn
	} `json:"call"`
	Expect expectation `json:"expect"`
}

// stepTimeout bounds every wait of the fake sidecar.
const stepTimeout = 10 * time.Second

func TestTranscripts(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(conformanceDir, "transcripts", "*.jsonl"))
	if len(files) == 0 {
		t.Fatal("no transcripts")
	}
	suite := loadSuite(t)
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".jsonl"), func(t *testing.T) {
			replay(t, f, suite.Host.config())
		})
	}
}

// fakeSidecar is the sidecar's side of the app socket.
type fakeSidecar struct {
	t    *testing.T
	ln   net.Listener
	conn net.Conn
	rd   *bufio.Reader
}

func (s *fakeSidecar) accept() {
	s.t.Helper()
	type accepted struct {
		c   net.Conn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := s.ln.Accept()
		ch <- accepted{c, err}
	}()
	select {
	case a := <-ch:
		if a.err != nil {
			s.t.Fatalf("accept: %v", a.err)
		}
		s.conn, s.rd = a.c, bufio.NewReader(a.c)
	case <-time.After(stepTimeout):
		s.t.Fatal("the app did not connect")
	}
}

// recv reads one line from the app within d; ok is false on a timeout.
func (s *fakeSidecar) recv(d time.Duration) (line []byte, ok bool) {
	s.t.Helper()
	_ = s.conn.SetReadDeadline(time.Now().Add(d))
	line, err := s.rd.ReadBytes('\n')
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() && len(line) == 0 {
		return nil, false
	}
	if err != nil {
		s.t.Fatalf("read from the app: %v (got %q)", err, line)
	}
	return line, true
}

func (s *fakeSidecar) send(b []byte) {
	s.t.Helper()
	_ = s.conn.SetWriteDeadline(time.Now().Add(stepTimeout))
	if _, err := s.conn.Write(b); err != nil {
		s.t.Fatalf("write to the app: %v", err)
	}
}

func replay(t *testing.T, file string, cfg Config) {
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "app.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg.Logger = quietLogger()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	host, err := NewHost(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close(context.Background())
	client := NewClient(host, ClientConfig{Socket: sock, App: "conformance", Logger: quietLogger()})
	done := make(chan error, 1)
	go func() { done <- client.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	}()

	sub := placeholders(t, strconv.Itoa(os.Getpid()))
	side := &fakeSidecar{t: t, ln: ln}
	side.accept()
	defer func() { side.conn.Close() }()
	for n, text := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		where := fmt.Sprintf("%s:%d", filepath.Base(file), n+1)
		dec := json.NewDecoder(strings.NewReader(text))
		dec.DisallowUnknownFields()
		var s transcriptStep
		if err := dec.Decode(&s); err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		switch {
		case s.Comment != "":
		case s.AppSends != nil:
			// A health report may come whenever calls happened; it is skipped unless the
			// step expects one.
			var line []byte
			var got map[string]any
			for deadline := time.Now().Add(stepTimeout); ; {
				var ok bool
				line, ok = side.recv(time.Until(deadline))
				if !ok {
					t.Fatalf("%s: the app sent nothing within %v", where, stepTimeout)
				}
				got = nil
				if err := json.Unmarshal(line, &got); err != nil {
					t.Fatalf("%s: the app sent %q: %v", where, line, err)
				}
				if got["type"] != "health" || s.AppSends["type"] == "health" {
					break
				}
			}
			if err := match(sub(s.AppSends), got); err != nil {
				t.Fatalf("%s: the app sent %s: %v", where, bytes.TrimSpace(line), err)
			}
		case s.SidecarSends != nil:
			b, _ := json.Marshal(sub(s.SidecarSends))
			side.send(append(b, '\n'))
		case s.SidecarSendsRaw != nil:
			side.send([]byte(*s.SidecarSendsRaw))
		case s.SidecarSendsB64 != nil:
			b, err := base64.StdEncoding.DecodeString(*s.SidecarSendsB64)
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			side.send(b)
		case s.SidecarSendsLongLine > 0:
			side.send(append(bytes.Repeat([]byte{'x'}, s.SidecarSendsLongLine), '\n'))
		case s.DropConnection:
			side.conn.Close()
			side.accept()
		case s.AppSilentMs > 0:
			if line, ok := side.recv(time.Duration(s.AppSilentMs) * time.Millisecond); ok {
				t.Fatalf("%s: the app sent %q, want silence", where, line)
			}
		case s.Call != nil:
			out, err := host.Call(ctx, s.Call.Plugin, s.Call.bytes(t))
			checkOutput(t, where, out, err, s.Expect)
		default:
			t.Fatalf("%s: step without an operation", where)
		}
	}
}

// placeholders returns a function that replaces {{worker}}, {{path:FILE}} and
// {{digest:FILE}} in every string of a message.
func placeholders(t *testing.T, worker string) func(map[string]any) map[string]any {
	dir, err := filepath.Abs(filepath.Join(conformanceDir, "plugins"))
	if err != nil {
		t.Fatal(err)
	}
	var str func(string) string
	str = func(s string) string {
		for {
			start := strings.Index(s, "{{")
			if start < 0 {
				return s
			}
			end := strings.Index(s[start:], "}}")
			if end < 0 {
				return s
			}
			key := s[start+2 : start+end]
			var val string
			switch {
			case key == "worker":
				val = worker
			case strings.HasPrefix(key, "path:"):
				val = filepath.Join(dir, strings.TrimPrefix(key, "path:"))
			case strings.HasPrefix(key, "digest:"):
				val = Digest(pluginFile(t, strings.TrimPrefix(key, "digest:")))
			default:
				t.Fatalf("unknown placeholder {{%s}}", key)
			}
			s = s[:start] + val + s[start+end+2:]
		}
	}
	var walk func(any) any
	walk = func(v any) any {
		switch v := v.(type) {
		case string:
			return str(v)
		case map[string]any:
			out := make(map[string]any, len(v))
			for k, x := range v {
				out[k] = walk(x)
			}
			return out
		case []any:
			out := make([]any, len(v))
			for i, x := range v {
				out[i] = walk(x)
			}
			return out
		default:
			return v
		}
	}
	return func(m map[string]any) map[string]any { return walk(m).(map[string]any) }
}

// match checks got against a transcript's expectation: every expected key must be present
// and match; {"$any": true} matches any value, {"$contains": s} any string containing s.
// Keys the app adds beyond the expected ones are allowed.
func match(want, got any) error {
	if w, ok := want.(map[string]any); ok {
		if _, ok := w["$any"]; ok {
			return nil
		}
		if sub, ok := w["$contains"].(string); ok {
			g, ok := got.(string)
			if !ok || !strings.Contains(g, sub) {
				return fmt.Errorf("%v does not contain %q", got, sub)
			}
			return nil
		}
		g, ok := got.(map[string]any)
		if !ok {
			return fmt.Errorf("%v is not an object", got)
		}
		for k, wv := range w {
			gv, ok := g[k]
			if !ok {
				return fmt.Errorf("field %q missing", k)
			}
			if err := match(wv, gv); err != nil {
				return fmt.Errorf("field %q: %w", k, err)
			}
		}
		return nil
	}
	if w, ok := want.([]any); ok {
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return fmt.Errorf("%v is not a list of %d", got, len(w))
		}
		for i := range w {
			if err := match(w[i], g[i]); err != nil {
				return fmt.Errorf("item %d: %w", i, err)
			}
		}
		return nil
	}
	wb, _ := json.Marshal(want)
	gb, _ := json.Marshal(got)
	if !bytes.Equal(wb, gb) {
		return fmt.Errorf("%s, want %s", gb, wb)
	}
	return nil
}
