package hotload

import (
	"context"
	"sync"
	"time"
)

// opContext is the context of one guest operation on an instance (a request, configure,
// self-check, a state hand-over): the caller's context with the operation's deadline, as
// context.WithTimeout(parent, CallTimeout) makes it, but one per instance, reused by every
// operation. WithTimeout allocated a context, a timer, a done channel and a cancel function
// for every call, about half of what a call allocated; the operations of an instance run one
// at a time, so one context, one timer and (while nothing ends an operation early) one
// channel serve them all.
//
// The same semantics as WithTimeout: the deadline is the earlier of the parent's and now +
// timeout; Done is closed when that deadline passes (Err: context.DeadlineExceeded) or the
// parent ends (Err: the parent's error); values are the parent's.
//
// A watcher that outlives its operation (wazero's goroutine that closes a module when its
// call's context ends, scheduled late) may still read Done and Err during a later operation;
// wazero gives each call its own channel that the call closes when it returns, and a watcher
// whose call has returned does nothing, so it cannot end the later operation. A timer that
// fires late ends an operation only once its own deadline has passed; a parent that ends
// late, only the operation it was registered for.
type opContext struct {
	timeout time.Duration
	// timer fires expire at an operation's own deadline (made on first use).
	timer *time.Timer

	mu     sync.Mutex
	parent context.Context
	// gen counts operations; active while one runs.
	gen    uint64
	active bool
	// deadline is the operation's; own says it is the instance's (timer armed), not the
	// parent's.
	deadline time.Time
	own      bool
	// done is closed when the operation ends early; then replaced for the next one.
	done chan struct{}
	err  error
	// stopParent unregisters the operation from the parent's end (nil if it cannot end).
	stopParent func() bool
}

func newOpContext(timeout time.Duration) *opContext {
	return &opContext{timeout: timeout, parent: context.Background(), done: make(chan struct{})}
}

// begin starts an operation under parent.
func (c *opContext) begin(parent context.Context) {
	now := time.Now()
	d := now.Add(c.timeout)
	own := true
	if pd, ok := parent.Deadline(); ok && pd.Before(d) {
		// As WithDeadline: the parent's deadline comes first, so the parent ends it.
		d, own = pd, false
	}
	c.mu.Lock()
	c.gen++
	gen := c.gen
	c.parent, c.active, c.deadline, c.own = parent, true, d, own
	c.mu.Unlock()
	if parent.Done() != nil {
		if err := parent.Err(); err != nil {
			c.end(gen, err)
			return
		}
		c.stopParent = context.AfterFunc(parent, func() { c.end(gen, parent.Err()) })
	}
	if own {
		if dur := d.Sub(now); dur <= 0 {
			c.end(gen, context.DeadlineExceeded)
		} else if c.timer == nil {
			c.timer = time.AfterFunc(dur, c.expire)
		} else {
			c.timer.Reset(dur)
		}
	}
}

// finish ends the operation under way (whatever happened to it) and readies the context for
// the next.
func (c *opContext) finish() {
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.stopParent != nil {
		c.stopParent()
		c.stopParent = nil
	}
	c.mu.Lock()
	c.active = false
	c.parent = context.Background()
	if c.err != nil {
		c.done, c.err = make(chan struct{}), nil
	}
	c.mu.Unlock()
}

// expire is the timer's: it ends the operation under way if its own deadline has passed (a
// timer armed for an earlier operation may fire late).
func (c *opContext) expire() {
	c.mu.Lock()
	gen, due := c.gen, c.active && c.own && !time.Now().Before(c.deadline)
	c.mu.Unlock()
	if due {
		c.end(gen, context.DeadlineExceeded)
	}
}

// end ends operation gen early with err, if it is still under way.
func (c *opContext) end(gen uint64, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen || !c.active || c.err != nil {
		return
	}
	c.err = err
	close(c.done)
}

// Deadline implements context.Context.
func (c *opContext) Deadline() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.deadline, true
}

// Done implements context.Context.
func (c *opContext) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done
}

// Err implements context.Context.
func (c *opContext) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Value implements context.Context.
func (c *opContext) Value(key any) any {
	c.mu.Lock()
	parent := c.parent
	c.mu.Unlock()
	return parent.Value(key)
}
