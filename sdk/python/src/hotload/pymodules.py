"""`ModuleHost`: hot-loads Python plugin modules and packages handed over by the sidecar.

The artifact is either one Python source file (a module) or a zip archive of one package
(`mypkg/__init__.py`, `mypkg/rules.py`, …; relative imports inside it work). A plugin
defines

    handle(*args, **kwargs) -> response     required
    configure(config)                       optional: the release's config (a JSON value)
    self_check() -> bool | None             optional: False or raise refuses the load
    save_state() -> object                  optional, on the outgoing revision
    restore_state(state)                    optional, on the incoming revision; raise refuses

A load runs exactly the bytes that were verified against the digest (no second read of the
file), under a name of its own (`hotload_plugins.<plugin>_<n>`), next to the serving
revision; the swap is one reference assignment, so a call that already holds the old
module finishes on it, and a failed load leaves the old module serving. Python code cannot
be stopped from outside: a plugin is trusted code, unlike a Wasm plugin.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import itertools
import sys
import tempfile
import threading
import time
import types
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from . import errors
from .errors import CallError, LoadError
from .hooks import LoadEvent, UnloadEvent, fire

_counter = itertools.count(1)
_PARENT = "hotload_plugins"


@dataclass(frozen=True)
class ModuleRevision:
    """A loaded revision of a Python plugin: its module and identity."""

    plugin: str
    revision: str
    digest: str
    config: Any
    module: types.ModuleType
    names: tuple[str, ...]  # its entries in sys.modules


@dataclass(frozen=True)
class ModuleLoaded:
    """A successful load of a Python plugin."""

    revision: str
    swapped: bool
    self_checked: bool
    state_handed_over: bool

    def health(self) -> str:
        """The `health` summary answered to the sidecar."""
        if not self.swapped:
            return "already serving"
        notes = ["self-check passed" if self.self_checked else "loaded"]
        if self.state_handed_over:
            notes.append("state restored")
        return "; ".join(notes)


class PinnedModule:
    """One revision of a Python plugin held for a request (a context manager)."""

    __slots__ = ("_rev",)

    def __init__(self, rev: ModuleRevision):
        self._rev: ModuleRevision | None = rev

    def call(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the pinned revision's handle()."""
        if self._rev is None:
            raise ValueError("hotload: call through a released pin")
        return self._rev.module.handle(*args, **kwargs)

    @property
    def revision(self) -> str:
        """The pinned revision's name."""
        if self._rev is None:
            raise ValueError("hotload: released pin")
        return self._rev.revision

    @property
    def module(self) -> types.ModuleType:
        """The pinned module itself."""
        if self._rev is None:
            raise ValueError("hotload: released pin")
        return self._rev.module

    def release(self) -> None:
        """Lets the revision go."""
        self._rev = None

    def __enter__(self) -> PinnedModule:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ModuleHost:
    """Named Python plugin slots, swapped atomically; the old revision serves on failure."""

    takes_json_config = True

    def __init__(self, *, hooks: object | None = None):
        self.hooks = hooks
        self._slots: dict[str, ModuleRevision] = {}
        self._lock = threading.Lock()  # serialises loads and unloads, never calls

    def call(self, plugin: str, *args: Any, **kwargs: Any) -> Any:
        """Calls the serving revision's handle(); the slot is read once."""
        return self._current(plugin).module.handle(*args, **kwargs)

    def pin(self, plugin: str) -> PinnedModule:
        """Pins the serving revision for all the calls of one request."""
        return PinnedModule(self._current(plugin))

    def _current(self, plugin: str) -> ModuleRevision:
        rev = self._slots.get(plugin)
        if rev is None:
            raise CallError(errors.NOT_LOADED, plugin)
        return rev

    def serving(self, plugin: str) -> str | None:
        """The revision serving `plugin`, or None."""
        rev = self._slots.get(plugin)
        return rev.revision if rev else None

    def plugins(self) -> list[str]:
        """Names of the loaded plugins, sorted."""
        return sorted(self._slots)

    def load_file(
        self, plugin: str, revision: str, path: str, digest: str, config: Any = None
    ) -> ModuleLoaded:
        """Loads the plugin file at `path` (verified against `digest`) as `revision`."""
        with self._lock:
            try:
                return self._load(plugin, revision, path, digest, config)
            except LoadError as err:
                fire(self.hooks, "load_failed", plugin, revision, err)
                raise

    def _load(
        self, plugin: str, revision: str, path: str, digest: str, config: Any
    ) -> ModuleLoaded:
        old = self._slots.get(plugin)
        if old and (old.revision, old.digest, old.config) == (revision, digest, config):
            return ModuleLoaded(revision, False, False, False)

        def fail(kind: str, reason: str) -> LoadError:
            return LoadError(kind, plugin, revision, reason=reason)

        try:
            with open(path, "rb") as f:
                source = f.read()
        except OSError as err:
            words = f"{err.strerror} (os error {err.errno})" if err.strerror else str(err)
            raise fail(errors.READ, f"cannot read {path}: {words}") from err
        actual = "sha256:" + hashlib.sha256(source).hexdigest()
        if actual != digest:
            raise fail(errors.DIGEST_MISMATCH, f"digest mismatch: expected {digest}, got {actual}")
        name = f"{_PARENT}.{_identifier(plugin)}_{next(_counter)}"
        module, names = _import(name, path, source, fail)
        try:
            if not callable(getattr(module, "handle", None)):
                raise fail(errors.ABI, "ABI violation: the module defines no handle()")
            if callable(getattr(module, "configure", None)):
                _guard(fail, errors.CONFIGURE, lambda: module.configure(config))
            self_checked = False
            if callable(getattr(module, "self_check", None)):
                if _guard(fail, errors.SELF_CHECK, module.self_check) is False:
                    raise fail(errors.SELF_CHECK, "self-check failed: returned False")
                self_checked = True
            handed = False
            if (
                old is not None
                and callable(getattr(old.module, "save_state", None))
                and callable(getattr(module, "restore_state", None))
            ):
                state = _guard(fail, errors.SAVE_STATE, old.module.save_state)
                _guard(fail, errors.RESTORE_STATE, lambda: module.restore_state(state))
                handed = True
        except LoadError:
            _forget(names)
            raise
        new = ModuleRevision(plugin, revision, digest, config, module, names)
        if old is not None:
            fire(self.hooks, "before_unload", UnloadEvent(plugin, old.revision, revision))
        t = time.perf_counter()
        self._slots[plugin] = new  # the swap: one reference assignment
        swap = time.perf_counter() - t
        if old is not None:
            _forget(old.names)  # callers holding the old module keep it alive
        fire(
            self.hooks,
            "after_load",
            LoadEvent(plugin, revision, old.revision if old else None, "none", swap),
        )
        return ModuleLoaded(revision, True, self_checked, handed)

    def unload(self, plugin: str) -> bool:
        """Stops serving `plugin`; calls in flight finish on their module."""
        with self._lock:
            old = self._slots.pop(plugin, None)
            if old is not None:
                fire(self.hooks, "before_unload", UnloadEvent(plugin, old.revision, None))
                _forget(old.names)
        return old is not None


def _identifier(plugin: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in plugin) or "plugin"


def _guard(fail, kind: str, fn):  # noqa: ANN001, ANN202
    try:
        return fn()
    except LoadError:
        raise
    except BaseException as err:  # noqa: BLE001 - a plugin must never take the app down
        phase = {"configure": "configure", "self_check": "self-check"}.get(
            kind, kind.replace("_", "-")
        )
        raise fail(kind, f"{phase} failed: raised {type(err).__name__}: {err}") from err


def _ensure_parent() -> None:
    if _PARENT not in sys.modules:
        parent = types.ModuleType(_PARENT)
        parent.__path__ = []  # a namespace for plugin modules, never searched
        sys.modules[_PARENT] = parent


def _import(name: str, path: str, source: bytes, fail) -> tuple[types.ModuleType, tuple]:  # noqa: ANN001
    """Imports the verified bytes as module `name`; returns it and its sys.modules names."""
    _ensure_parent()
    if source[:4] == b"PK\x03\x04":
        return _import_package(name, path, source, fail)
    module = types.ModuleType(name)
    module.__file__ = path
    try:
        # Execute exactly the bytes that were verified, and write no __pycache__ into the
        # sidecar's store.
        code = compile(source, path, "exec")
        sys.modules[name] = module
        exec(code, module.__dict__)  # noqa: S102 - running the plugin is the point
    except BaseException as err:  # noqa: BLE001
        sys.modules.pop(name, None)
        raise fail(errors.IMPORT, f"import failed: {type(err).__name__}: {err}") from err
    return module, (name,)


def _import_package(name: str, path: str, source: bytes, fail):  # noqa: ANN001, ANN202
    try:
        archive = zipfile.ZipFile(io.BytesIO(source))
        members = archive.namelist()
    except zipfile.BadZipFile as err:
        raise fail(errors.IMPORT, f"import failed: not a valid package archive: {err}") from err
    tops = {PurePosixPath(m).parts[0] for m in members if m and not m.startswith("__MACOSX")}
    if len(tops) != 1 or f"{next(iter(tops))}/__init__.py" not in members:
        raise fail(
            errors.IMPORT,
            "import failed: a package archive holds exactly one top-level package "
            f"directory with an __init__.py (found {sorted(tops)})",
        )
    top = next(iter(tops))
    for m in members:
        if PurePosixPath(m).is_absolute() or ".." in PurePosixPath(m).parts:
            raise fail(errors.IMPORT, f"import failed: unsafe path {m!r} in the archive")
    root = tempfile.mkdtemp(prefix="hotload-pkg-")
    archive.extractall(root)
    pkg_dir = f"{root}/{top}"
    spec = importlib.util.spec_from_file_location(
        name, f"{pkg_dir}/__init__.py", submodule_search_locations=[pkg_dir]
    )
    if spec is None or spec.loader is None:
        raise fail(errors.IMPORT, f"import failed: cannot import the package in {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    before = set(sys.modules)
    try:
        spec.loader.exec_module(module)
    except BaseException as err:  # noqa: BLE001
        _forget((name, *(n for n in set(sys.modules) - before if n.startswith(name + "."))))
        raise fail(errors.IMPORT, f"import failed: {type(err).__name__}: {err}") from err
    subs = tuple(n for n in set(sys.modules) - before if n.startswith(name + "."))
    return module, (name, *subs)


def _forget(names: tuple[str, ...]) -> None:
    """Drops a revision's modules from sys.modules, submodules it imported later included
    (holders of the module objects keep them alive)."""
    prefixes = tuple(n + "." for n in names)
    for n in list(sys.modules):
        if n in names or n.startswith(prefixes):
            sys.modules.pop(n, None)
