"""A WASI sleep shorter than the deadline returns normally with its event, after the time
asked for; one past the deadline ends there as a timeout (the conformance case covers it)."""

from __future__ import annotations

import struct
import time

import wasmtime
from conftest import host_config

from hotload import LoadRequest, PluginHost, sha256_digest

# handle(): sleeps the number of milliseconds in its input's first byte (relative monotonic
# clock subscription, userdata 7), then answers 12 bytes: errno (u32), nevents (u32), the
# first event's userdata low word (u32).
SLEEPER = """
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param $p i32) (param $l i32) (result i64)
    (i64.store (i32.const 0) (i64.const 7))
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24)
      (i64.mul (i64.extend_i32_u (i32.load8_u (local.get $p))) (i64.const 1000000)))
    (i64.store (i32.const 32) (i64.const 0))
    (i32.store16 (i32.const 40) (i32.const 0))
    (i32.store (i32.const 256)
      (call $poll (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 192)))
    (i32.store (i32.const 260) (i32.load (i32.const 192)))
    (i32.store (i32.const 264) (i32.load (i32.const 128)))
    (i64.or (i64.shl (i64.const 256) (i64.const 32)) (i64.const 12))))
"""


def test_a_short_sleep_returns_its_event_and_a_long_one_times_out() -> None:
    wasm = wasmtime.wat2wasm(SLEEPER)
    with PluginHost(host_config({}, call_timeout=0.5)) as host:
        host.load(LoadRequest("s", "r1", sha256_digest(wasm), wasm))
        start = time.monotonic()
        out = host.call("s", bytes([30]))
        took = time.monotonic() - start
        assert struct.unpack("<III", out) == (0, 1, 7)
        assert 0.025 <= took < 0.45, took
        out = host.call("s", bytes([250]))  # 250 ms: within the 500 ms deadline
        assert struct.unpack("<III", out) == (0, 1, 7)
