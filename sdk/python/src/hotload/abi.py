"""The plugin ABI (plugin-host/src/abi.rs): export names, pointer packing, range and export checks.

| export          | signature                | required |
|-----------------|--------------------------|----------|
| `memory`        | memory                   | yes      |
| `alloc`         | `(i32) -> i32`           | yes      |
| `handle`        | `(i32, i32) -> i64`      | yes      |
| `configure`     | `(i32, i32) -> i32`      | no       |
| `self_check`    | `() -> i32`              | no       |
| `save_state`    | `() -> i64`              | no       |
| `restore_state` | `(i32, i32) -> i32`      | no       |

A packed `(ptr, len)` is `(ptr << 32) | len` as an i64. Everything here is pure.
"""

from __future__ import annotations

from dataclasses import dataclass

INITIALIZE = "_initialize"
MEMORY = "memory"
ALLOC = "alloc"
HANDLE = "handle"
CONFIGURE = "configure"
SELF_CHECK = "self_check"
SAVE_STATE = "save_state"
RESTORE_STATE = "restore_state"


def pack(ptr: int, length: int) -> int:
    """Packs a pointer and a length the way plugins return them (as a signed i64)."""
    bits = ((ptr & 0xFFFF_FFFF) << 32) | (length & 0xFFFF_FFFF)
    return bits - (1 << 64) if bits >= 1 << 63 else bits


def unpack(packed: int) -> tuple[int, int]:
    """Splits a packed `(ptr, len)` returned by a plugin into two u32."""
    bits = packed & 0xFFFF_FFFF_FFFF_FFFF
    return bits >> 32, bits & 0xFFFF_FFFF


def checked_range(ptr: int, length: int, memory_len: int) -> range | None:
    """`[ptr, ptr + len)` if it lies inside a memory of `memory_len` bytes, else None."""
    end = ptr + length
    return range(ptr, end) if end <= memory_len else None


@dataclass(frozen=True)
class Capabilities:
    """Optional exports a module provides."""

    configure: bool = False
    self_check: bool = False
    save_state: bool = False
    restore_state: bool = False


class AbiViolation(ValueError):
    """A module's exports do not follow the ABI; the message names the export."""


def check_exports(exports: dict[str, str]) -> Capabilities:
    """Checks exports (name -> "memory", "(i32,i32)->i64" or "other") against the ABI table.

    The error words are hotload-host's, so every SDK refuses a plugin with the same reason.
    """
    kind = exports.get(MEMORY)
    if kind is None:
        raise AbiViolation(f"missing export `{MEMORY}` (memory)")
    if kind != "memory":
        raise AbiViolation(f"export `{MEMORY}` must be a memory, found {_debug(kind)}")

    def func(name: str, sig: str, required: bool) -> bool:
        found = exports.get(name)
        if found is None:
            if required:
                raise AbiViolation(f"missing export `{name}` {sig}")
            return False
        if found.startswith("("):
            if found != sig:
                raise AbiViolation(f"export `{name}` has signature {found}, want {sig}")
            return True
        raise AbiViolation(f"export `{name}` must be a function {sig}, found {_debug(found)}")

    func(ALLOC, "(i32)->i32", True)
    func(HANDLE, "(i32,i32)->i64", True)
    return Capabilities(
        configure=func(CONFIGURE, "(i32,i32)->i32", False),
        self_check=func(SELF_CHECK, "()->i32", False),
        save_state=func(SAVE_STATE, "()->i64", False),
        restore_state=func(RESTORE_STATE, "(i32,i32)->i32", False),
    )


def _debug(kind: str) -> str:
    return {"memory": "Memory", "other": "Other"}.get(kind, f'Func("{kind}")')
