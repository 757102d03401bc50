package hotload

import "time"

// Hooks are callbacks around loads, for metrics, logs, warming caches or alerting. They run
// on the loading goroutine, never on a request. BeforeUnload runs after the new revision
// passed every check and right before the swap, so an app that flushes something there
// knows the swap will happen.
type Hooks interface {
	// BeforeUnload is called right before a revision stops taking new calls.
	BeforeUnload(UnloadEvent)
	// AfterLoad is called right after a new revision started taking calls.
	AfterLoad(LoadEvent)
	// LoadFailed is called when a load was refused; the old revision keeps serving.
	LoadFailed(plugin, revision string, err error)
}

// LoadEvent says what was swapped in.
type LoadEvent struct {
	// Plugin is the slot name.
	Plugin string
	// Revision is the revision now serving.
	Revision string
	// Previous is the revision it replaced ("" when none).
	Previous string
	// Cache says where the compiled code came from.
	Cache CacheOutcome
	// Swap is the time the atomic swap itself took.
	Swap time.Duration
}

// UnloadEvent says what is about to be replaced or removed.
type UnloadEvent struct {
	// Plugin is the slot name.
	Plugin string
	// Revision is the revision leaving.
	Revision string
	// Next is the revision replacing it ("" when the plugin is removed).
	Next string
}

// NoHooks does nothing; embed it to implement only the hooks you need.
type NoHooks struct{}

// BeforeUnload does nothing.
func (NoHooks) BeforeUnload(UnloadEvent) {}

// AfterLoad does nothing.
func (NoHooks) AfterLoad(LoadEvent) {}

// LoadFailed does nothing.
func (NoHooks) LoadFailed(string, string, error) {}
