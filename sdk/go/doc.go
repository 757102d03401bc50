// Package hotload lets a Go app hot-load Wasm plugins that the Hotload sidecar hands it, with
// the same behaviour as the Rust library hotload-host: plugins built to one small ABI
// (alloc, handle, optional configure, self_check, save_state, restore_state) run on wazero
// (pure Go, no cgo), swap atomically under traffic, and a refused revision never replaces
// the one serving.
//
// Three pieces, context-first like wazero itself:
//
//   - Host holds named plugins. Load compiles and checks a revision off the request path
//     (digest, ABI, instantiation, configure, self-check, state hand-over) and swaps it in
//     with one atomic store; Call runs a request on whatever serves at that instant; Pin
//     holds one revision for all the calls of a request. Every guest call runs under a CPU
//     deadline (Config.CallTimeout, also bounding WASI sleeps) and a memory ceiling
//     (Config.MaxMemoryBytes) that traps with the sizes in the reason.
//   - Client is one worker's link to the sidecar over the app socket (protocol v2,
//     docs/protocol.md): hello with the worker id, load → loaded/failed, unload →
//     unloaded, reconnection with back-off from 50 ms to 2 s.
//   - Hooks (BeforeUnload, AfterLoad, LoadFailed) tell the app about swaps.
//
// Errors are *LoadError and *CallError, whose messages are the reasons the sidecar forwards
// to the operator (`plugin auth revision r2: self-check failed: returned status 7`), and
// whose Kind fields are the vocabulary of the shared conformance cases in sdk/conformance.
package hotload
