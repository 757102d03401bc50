package hotload

import (
	"context"
	"errors"
	"testing"
	"time"
)

type ctxKey struct{}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// waitDone fails the test unless ctx ends within 5 s; what names the end it waits for.
func waitDone(t *testing.T, ctx context.Context, what string) {
	t.Helper()
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("not ended " + what)
	}
}

// An instance's reused operation context behaves as context.WithTimeout(parent, timeout),
// operation after operation.
func TestTheOperationContextActsAsWithTimeout(t *testing.T) {
	c := newOpContext(20 * time.Millisecond)
	parent := context.WithValue(context.Background(), ctxKey{}, "v")

	// Runs past its deadline.
	start := time.Now()
	c.begin(parent)
	if d, ok := c.Deadline(); !ok || d.Sub(start) < 20*time.Millisecond || d.Sub(start) > time.Second {
		t.Fatalf("deadline %v after the start", d.Sub(start))
	}
	if c.Value(ctxKey{}) != "v" {
		t.Fatal("the parent's values are not there")
	}
	if c.Err() != nil || isClosed(c.Done()) {
		t.Fatal("ended at once")
	}
	waitDone(t, c, "at its deadline")
	if !errors.Is(c.Err(), context.DeadlineExceeded) || time.Since(start) < 20*time.Millisecond {
		t.Fatalf("err %v after %v", c.Err(), time.Since(start))
	}
	c.finish()

	// The next operation starts afresh; a timer of the previous one firing late does nothing.
	c.begin(context.Background())
	c.expire()
	if c.Err() != nil || isClosed(c.Done()) {
		t.Fatalf("a fresh operation: err %v", c.Err())
	}
	if c.Value(ctxKey{}) != nil {
		t.Fatal("the previous parent's values leaked")
	}
	c.finish()

	// The parent is canceled while the operation runs.
	ctx, cancel := context.WithCancel(context.Background())
	c.begin(ctx)
	cancel()
	waitDone(t, c, "when the parent was canceled")
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("err %v, want canceled", c.Err())
	}
	c.finish()

	// A parent canceled after its operation finished leaves the next one alone.
	ctx, cancel = context.WithCancel(context.Background())
	c.begin(ctx)
	c.finish()
	c.begin(context.Background())
	cancel()
	time.Sleep(10 * time.Millisecond)
	if c.Err() != nil || isClosed(c.Done()) {
		t.Fatalf("an earlier parent's cancel ended a later operation: %v", c.Err())
	}
	c.finish()

	// A parent that is already done ends the operation at once.
	c.begin(ctx)
	if !errors.Is(c.Err(), context.Canceled) || !isClosed(c.Done()) {
		t.Fatalf("under a canceled parent: %v", c.Err())
	}
	c.finish()

	// The parent's deadline comes first: it is the operation's, and its end ends it.
	long := newOpContext(time.Hour)
	pd, pcancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer pcancel()
	long.begin(pd)
	want, _ := pd.Deadline()
	if d, _ := long.Deadline(); !d.Equal(want) {
		t.Fatalf("deadline %v, want the parent's %v", d, want)
	}
	waitDone(t, long, "at the parent's deadline")
	if !errors.Is(long.Err(), context.DeadlineExceeded) {
		t.Fatalf("err %v", long.Err())
	}
	long.finish()

	// Operations that end in time reuse one channel (nothing is allocated for them).
	c.begin(context.Background())
	ch := c.Done()
	c.finish()
	c.begin(context.Background())
	if c.Done() != ch {
		t.Fatal("a new channel for an operation that ended in time")
	}
	c.finish()
	if allocs := testing.AllocsPerRun(100, func() {
		c.begin(context.Background())
		c.finish()
	}); allocs != 0 {
		t.Fatalf("%v allocations per operation", allocs)
	}
}
