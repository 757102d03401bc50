"""Hotload for Python apps: hot-load Wasm plugins (wasmtime) and Python modules handed over
by the Hotload sidecar, over app protocol v2 (docs/protocol.md).

    host = hotload.PluginHost()                          # Wasm plugins, ABI v1
    client = hotload.Client(host, app="checkout").start()  # per worker process
    out = host.call("auth", b"request")
    with host.pin("auth") as auth:                       # one revision per request
        auth.call(b"a"); auth.call(b"b")
"""

from . import abi, protocol
from .abi import Capabilities
from .client import Client
from .engine import HostConfig
from .errors import CallError, Failure, HotloadError, LoadError
from .health import HEALTH_INTERVAL, LATENCY_BOUNDS_US, latency_bucket
from .hooks import HostHooks, LoadEvent, UnloadEvent
from .host import Loaded, LoadRequest, Pinned, PluginHost, plan_load, sha256_digest
from .pymodules import ModuleHost, PinnedModule
from .revision import RevisionId

__version__ = "0.1.0"

__all__ = [
    "HEALTH_INTERVAL",
    "LATENCY_BOUNDS_US",
    "CallError",
    "Capabilities",
    "Client",
    "Failure",
    "HostConfig",
    "HostHooks",
    "HotloadError",
    "LoadError",
    "LoadEvent",
    "LoadRequest",
    "Loaded",
    "ModuleHost",
    "Pinned",
    "PinnedModule",
    "PluginHost",
    "RevisionId",
    "UnloadEvent",
    "__version__",
    "abi",
    "latency_bucket",
    "protocol",
    "plan_load",
    "sha256_digest",
]
