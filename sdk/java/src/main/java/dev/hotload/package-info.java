/**
 * The Hotload SDK for Java: hot-loads Wasm plugins that the Hotload sidecar rolls out.
 *
 * <pre>
 * sidecar ══ app socket (protocol v2) ══► AppClient ─ load/unload ─► PluginHost ─ slots ─► Revision ─ pool ─► PluginInstance
 *                                            ▲ loaded / failed / unloaded        │ call / pin           (Chicory, on the caller's thread)
 * </pre>
 *
 * {@link dev.hotload.PluginHost} owns the plugins (load, atomic swap, call, pin, unload);
 * {@link dev.hotload.AppClient} speaks the protocol (docs/protocol.md) for one worker process.
 * Errors carry hotload-host's wording, which the operator sees as the release's reason.
 */
package dev.hotload;
