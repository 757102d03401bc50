"""Python module hot-loading (seed 000's use case): modules and packages from the delivered
file, swapped atomically, the old one kept serving on any failure with a precise reason."""

from __future__ import annotations

import io
import threading
import zipfile
from pathlib import Path

import pytest

from hotload import CallError, LoadError, ModuleHost, sha256_digest

V1 = b"""
count = 0
def handle(x):
    global count
    count += 1
    return "v1:" + x
def save_state():
    return {"count": count}
def restore_state(state):
    global count
    count = state["count"]
"""

V2 = V1.replace(b'"v1:"', b'"v2:"')


def write(tmp: Path, name: str, data: bytes) -> tuple[str, str]:
    path = tmp / name
    path.write_bytes(data)
    return str(path), sha256_digest(data)


def test_load_swap_and_state_hand_over(tmp_path: Path) -> None:
    host = ModuleHost()
    p1, d1 = write(tmp_path, "v1.py", V1)
    assert host.load_file("rules", "r1", p1, d1).swapped
    assert host.call("rules", "a") == "v1:a"
    host.call("rules", "b")
    p2, d2 = write(tmp_path, "v2.py", V2)
    loaded = host.load_file("rules", "r2", p2, d2)
    assert loaded.swapped and loaded.state_handed_over
    assert host.call("rules", "c") == "v2:c"
    assert host.pin("rules").module.count == 3
    again = host.load_file("rules", "r2", p2, d2)
    assert not again.swapped and again.health() == "already serving"


@pytest.mark.parametrize(
    ("source", "kind", "reason"),
    [
        (b"def handle(:\n", "import", "import failed: SyntaxError"),
        (b"raise RuntimeError('boom')\n", "import", "import failed: RuntimeError: boom"),
        (b"x = 1\n", "abi", "defines no handle()"),
        (
            b"def handle(x): return x\ndef self_check(): return False\n",
            "self_check",
            "self-check failed: returned False",
        ),
        (
            b"def handle(x): return x\ndef configure(c): raise ValueError(c)\n",
            "configure",
            "configure failed: raised ValueError",
        ),
        (
            b"def handle(x): return x\ndef restore_state(s): raise KeyError('count')\n",
            "restore_state",
            "restore-state failed: raised KeyError",
        ),
    ],
)
def test_refusals_keep_the_old_revision(
    tmp_path: Path, source: bytes, kind: str, reason: str
) -> None:
    host = ModuleHost()
    host.load_file("rules", "r1", *write(tmp_path, "v1.py", V1), config={"k": 1})
    host.call("rules", "a")
    with pytest.raises(LoadError) as err:
        host.load_file("rules", "r2", *write(tmp_path, "bad.py", source))
    assert err.value.kind == kind
    assert str(err.value).startswith("plugin rules revision r2: ")
    assert reason in str(err.value)
    assert host.serving("rules") == "r1"
    assert host.call("rules", "b") == "v1:b"


def test_digest_mismatch_and_unreadable_file(tmp_path: Path) -> None:
    host = ModuleHost()
    path, _ = write(tmp_path, "v1.py", V1)
    with pytest.raises(LoadError, match="digest mismatch: expected sha256:"):
        host.load_file("rules", "r1", path, sha256_digest(b"other"))
    with pytest.raises(LoadError, match="cannot read /nonexistent"):
        host.load_file("rules", "r1", "/nonexistent/x.py", sha256_digest(b""))
    with pytest.raises(CallError, match="plugin rules: not loaded"):
        host.call("rules", "x")


def package(version: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("rules/__init__.py", "from .impl import handle\nfrom . import impl\n")
        z.writestr("rules/impl.py", f"def handle(x):\n    return '{version}:' + x\n")
    return buf.getvalue()


def test_a_package_archive_loads_with_relative_imports_and_swaps(tmp_path: Path) -> None:
    host = ModuleHost()
    host.load_file("pkg", "r1", *write(tmp_path, "p1.zip", package("p1")))
    assert host.call("pkg", "x") == "p1:x"
    with host.pin("pkg") as pinned:
        host.load_file("pkg", "r2", *write(tmp_path, "p2.zip", package("p2")))
        assert host.call("pkg", "x") == "p2:x"
        assert pinned.call("y") == "p1:y", "a pinned request stays on its revision"
    bad = io.BytesIO()
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("a/__init__.py", "")
        z.writestr("b/__init__.py", "")
    with pytest.raises(LoadError, match="exactly one top-level package"):
        host.load_file("pkg", "r3", *write(tmp_path, "bad.zip", bad.getvalue()))
    assert host.call("pkg", "z") == "p2:z"
    assert host.unload("pkg") and not host.unload("pkg")


def test_hundred_swaps_under_concurrent_calls(tmp_path: Path) -> None:
    host = ModuleHost()
    files = [write(tmp_path, "v1.py", V1), write(tmp_path, "v2.py", V2)]
    host.load_file("rules", "r0", *files[0])
    stop = threading.Event()
    errors: list[str] = []

    def caller() -> None:
        while not stop.is_set():
            try:
                out = host.call("rules", "q")
            except Exception as err:  # noqa: BLE001
                errors.append(str(err))
                return
            if out not in ("v1:q", "v2:q"):
                errors.append(out)
                return

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for t in threads:
        t.start()
    for n in range(1, 101):
        host.load_file("rules", f"r{n}", *files[n % 2])
    stop.set()
    for t in threads:
        t.join(30)
    assert errors == []
    assert host.serving("rules") == "r100"
