package hotload

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// Client is one worker's link to the Hotload sidecar (app protocol v2, docs/protocol.md): it
// connects to the app socket, says hello with its worker id, hands every load to its Host
// and answers loaded or failed, answers every unload, and reconnects with back-off whenever
// the connection drops. Each process of an app runs its own Client.
//
//	connect ─ hello ─┬─ load ─── Host.Load (off the request path) ─── loaded | failed
//	                 ├─ unload ─ Host.Unload ───────────────────────── unloaded
//	                 ├─ error, garbage: logged, connection kept
//	                 └─ every HealthInterval: Host.TakeHealth ─ health (only when calls happened)
//	drop ─ wait 50 ms, 100 ms, … 2 s ─ connect again (same worker id)
type Client struct {
	host *Host
	cfg  ClientConfig
}

// ClientConfig configures a Client; every field has a default.
type ClientConfig struct {
	// Socket is the app socket path (default: $HOTLOAD_APP_SOCKET, else
	// /var/run/hotload/app.sock).
	Socket string
	// App is a free-form app name shown by the sidecar (default: the executable's name).
	App string
	// Worker is this process's stable worker id (default: the process id). Two connections
	// with one id replace each other, so each process needs its own.
	Worker string
	// MinBackoff and MaxBackoff bound the wait between connection attempts (default 50 ms
	// doubling to 2 s).
	MinBackoff, MaxBackoff time.Duration
	// HealthInterval is how often the host's call counts (Host.TakeHealth) go to the
	// sidecar in a `health` message while calls happen (default HealthInterval, 1 s).
	HealthInterval time.Duration
	// Logger receives the client's structured logs (default slog.Default()).
	Logger *slog.Logger
}

// DefaultSocket is where the sidecar listens unless HOTLOAD_APP_SOCKET says otherwise.
const DefaultSocket = "/var/run/hotload/app.sock"

// NewClient makes a client that loads into host; Run connects it.
func NewClient(host *Host, cfg ClientConfig) *Client {
	if cfg.Socket == "" {
		cfg.Socket = os.Getenv("HOTLOAD_APP_SOCKET")
	}
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket
	}
	if cfg.App == "" {
		cfg.App = filepath.Base(os.Args[0])
	}
	if cfg.Worker == "" {
		cfg.Worker = strconv.Itoa(os.Getpid())
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 50 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(2*time.Second, cfg.MinBackoff)
	}
	if cfg.HealthInterval <= 0 {
		cfg.HealthInterval = HealthInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Logger = cfg.Logger.With("worker", cfg.Worker)
	return &Client{host: host, cfg: cfg}
}

// Worker is the id this client says hello with.
func (c *Client) Worker() string { return c.cfg.Worker }

// Run keeps the link up until ctx is done, then closes it and returns ctx's error. Run it on
// its own goroutine; loads run there too, never on a request.
func (c *Client) Run(ctx context.Context) error {
	delay := c.cfg.MinBackoff
	var dialer net.Dialer
	for {
		conn, err := dialer.DialContext(ctx, "unix", c.cfg.Socket)
		if err == nil {
			delay = c.cfg.MinBackoff
			err = c.session(ctx, conn)
			if ctx.Err() == nil {
				c.cfg.Logger.Warn("sidecar link dropped", "error", err)
			}
		} else if ctx.Err() == nil {
			c.cfg.Logger.Debug("sidecar not reachable yet", "socket", c.cfg.Socket, "error", err)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		delay = nextBackoff(delay, c.cfg.MinBackoff, c.cfg.MaxBackoff)
	}
}

// session speaks the protocol on one connection until it drops or ctx is done.
func (c *Client) session(ctx context.Context, conn net.Conn) error {
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	defer conn.Close()
	if _, err := conn.Write(encodeLine(hello(c.cfg.App, c.cfg.Worker))); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	c.cfg.Logger.Info("connected to the sidecar", "socket", c.cfg.Socket)
	// Answers and health reports share the connection: one line at a time.
	var writeMu sync.Mutex
	send := func(msg any) error {
		writeMu.Lock()
		defer writeMu.Unlock()
		_, err := conn.Write(encodeLine(msg))
		return err
	}
	done := make(chan struct{})
	defer close(done)
	go c.reportHealth(done, send)
	rd := bufio.NewReaderSize(conn, 64<<10)
	for n := 1; ; n++ {
		line, err := readLine(rd, maxSidecarLine)
		if errors.Is(err, errLineTooLong) {
			c.cfg.Logger.Warn("skipped an overlong line from the sidecar", "line", n, "limit", maxSidecarLine)
			continue
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("sidecar closed the connection")
			}
			return err
		}
		msg, err := parseSidecarLine(line)
		if err != nil {
			c.cfg.Logger.Warn("unusable message from the sidecar", "line", n, "error", err)
			continue
		}
		reply := c.answer(ctx, msg)
		if reply == nil {
			continue
		}
		if err := send(reply); err != nil {
			return fmt.Errorf("send answer: %w", err)
		}
	}
}

// reportHealth sends the host's counts every HealthInterval until done, and nothing while no
// call happened. Counts taken for a report that could not be sent are lost, as the protocol
// says (a dropped connection loses its last report, never more).
func (c *Client) reportHealth(done <-chan struct{}, send func(any) error) {
	tick := time.NewTicker(c.cfg.HealthInterval)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		plugins := c.host.TakeHealth()
		if len(plugins) == 0 {
			continue
		}
		if err := send(healthMessage{Type: "health", Plugins: plugins}); err != nil {
			c.cfg.Logger.Warn("could not send a health report", "error", err)
			return
		}
	}
}

// answer carries out one message and returns the reply (nil when none is due).
func (c *Client) answer(ctx context.Context, msg sidecarMessage) any {
	log := c.cfg.Logger.With("plugin", msg.Plugin)
	switch msg.Type {
	case "load":
		loaded, err := c.load(ctx, msg)
		if err != nil {
			return failedMessage{Type: "failed", Plugin: msg.Plugin, Revision: msg.Revision, Reason: err.Error()}
		}
		return loadedMessage{Type: "loaded", Plugin: msg.Plugin, Revision: msg.Revision, Health: loaded.Health()}
	case "unload":
		was := c.host.Unload(msg.Plugin)
		log.Info("unload asked by the sidecar", "was_loaded", was)
		return unloadedMessage{Type: "unloaded", Plugin: msg.Plugin}
	default:
		log.Warn("the sidecar refused a message", "reason", msg.Reason)
		return nil
	}
}

func (c *Client) load(ctx context.Context, msg sidecarMessage) (*Loaded, error) {
	if msg.Path == "" {
		return nil, fmt.Errorf("plugin %s revision %s: the load names no path", msg.Plugin, msg.Revision)
	}
	req, err := ReadLoadRequest(msg.Plugin, msg.Revision, msg.Path, msg.Digest, configBytes(msg.Config))
	if err != nil {
		c.host.cfg.Hooks.LoadFailed(msg.Plugin, msg.Revision, err)
		return nil, err
	}
	return c.host.Load(ctx, req)
}

var errLineTooLong = errors.New("line too long")

// readLine reads one line without its newline; a line longer than limit is consumed up to
// its newline and reported as errLineTooLong, so the reader stays in step.
func readLine(rd *bufio.Reader, limit int) ([]byte, error) {
	var line []byte
	tooLong := false
	for {
		chunk, err := rd.ReadSlice('\n')
		if !tooLong {
			if len(line)+len(chunk) > limit+1 {
				tooLong, line = true, nil
			} else {
				line = append(line, chunk...)
			}
		}
		switch {
		case err == nil && tooLong:
			return nil, errLineTooLong
		case err == nil:
			return line[:len(line)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return nil, err
		}
	}
}
