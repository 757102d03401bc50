"""Errors of the host, each naming the plugin, the revision and the cause.

The words are hotload-host's (plugin-host/src/error.rs) because a refused load's reason
travels to the operator's status and events: `plugin auth revision r2: self-check failed:
returned status 7`. `kind` and `Failure.kind` are the shared vocabulary of
sdk/conformance/cases.json.
"""

from __future__ import annotations

from dataclasses import dataclass

# Failure kinds: how a guest export did not complete.
STATUS = "status"
TIMEOUT = "timeout"
MEMORY_LIMIT = "memory_limit"
TRAP = "trap"
BAD_RANGE = "bad_range"
OTHER = "other"


@dataclass(frozen=True)
class Failure:
    """How a guest export (handle, self_check, …) failed."""

    kind: str
    status: int = 0
    requested: int = 0
    limit: int = 0
    ptr: int = 0
    length: int = 0
    detail: str = ""

    def __str__(self) -> str:
        if self.kind == STATUS:
            return f"returned status {self.status}"
        if self.kind == TIMEOUT:
            return "deadline exceeded (interrupted)"
        if self.kind == MEMORY_LIMIT:
            return (
                f"memory limit exceeded: asked for {self.requested} bytes, "
                f"limit is {self.limit} bytes"
            )
        if self.kind == TRAP:
            return f"trap: {self.detail}"
        if self.kind == BAD_RANGE:
            return f"returned range ptr={self.ptr} len={self.length} outside its memory"
        return self.detail


class GuestError(Exception):
    """Raised inside the host when a guest export fails; carries the Failure."""

    def __init__(self, failure: Failure):
        super().__init__(str(failure))
        self.failure = failure


class HotloadError(Exception):
    """Base of the errors a host reports."""

    kind = "unclassified"
    failure: Failure | None = None

    @property
    def fault(self) -> str:
        """The failure kind of a guest failure ("" when not a guest failure)."""
        return self.failure.kind if self.failure else ""


# Load error kinds.
BAD_DIGEST = "bad_digest"
DIGEST_MISMATCH = "digest_mismatch"
READ = "read"
MODULE_TOO_LARGE = "module_too_large"
COMPILE_TIMEOUT = "compile_timeout"
INVALID_WASM = "invalid_wasm"
ABI = "abi"
INSTANTIATE = "instantiate"
CONFIGURE = "configure"
SELF_CHECK = "self_check"
SAVE_STATE = "save_state"
RESTORE_STATE = "restore_state"
TOO_MANY_PLUGINS = "too_many_plugins"
IMPORT = "import"

_PHASE = {
    CONFIGURE: "configure",
    SELF_CHECK: "self-check",
    SAVE_STATE: "save-state",
    RESTORE_STATE: "restore-state",
}


class LoadError(HotloadError):
    """A load that did not happen; the previous revision (if any) keeps serving."""

    def __init__(
        self,
        kind: str,
        plugin: str,
        revision: str,
        *,
        failure: Failure | None = None,
        reason: str = "",
    ):
        self.kind = kind
        self.plugin = plugin
        self.revision = revision
        self.failure = failure
        self.reason = reason
        super().__init__(self._message())

    def _message(self) -> str:
        who = f"plugin {self.plugin} revision {self.revision}"
        if self.kind == TOO_MANY_PLUGINS:
            return f"plugin {self.plugin}: {self.reason}"
        if self.kind in _PHASE and self.failure is not None:
            return f"{who}: {_PHASE[self.kind]} failed: {self.failure}"
        if self.kind == INSTANTIATE and self.failure is not None:
            return f"{who}: instantiation failed: {self.failure}"
        if self.kind == INVALID_WASM:
            return f"{who}: invalid wasm: {self.reason}"
        if self.kind == ABI:
            return f"{who}: ABI violation: {self.reason}"
        return f"{who}: {self.reason}"

    def __str__(self) -> str:
        return self._message()


# Call error kinds.
NOT_LOADED = "not_loaded"
BUSY = "busy"
HANDLE = "handle"
REINSTANTIATE = "reinstantiate"


class CallError(HotloadError):
    """A request the serving revision could not serve."""

    def __init__(
        self,
        kind: str,
        plugin: str,
        revision: str = "",
        *,
        failure: Failure | None = None,
        waited_ms: int = 0,
    ):
        self.kind = kind
        self.plugin = plugin
        self.revision = revision
        self.failure = failure
        self.waited_ms = waited_ms
        super().__init__(self._message())

    def _message(self) -> str:
        who = f"plugin {self.plugin} revision {self.revision}"
        if self.kind == NOT_LOADED:
            return f"plugin {self.plugin}: not loaded"
        if self.kind == BUSY:
            return f"{who}: no free instance within {self.waited_ms} ms"
        if self.kind == REINSTANTIATE:
            return f"{who}: re-instantiation failed: {self.failure}"
        return f"{who}: handle failed: {self.failure}"

    def __str__(self) -> str:
        return self._message()
