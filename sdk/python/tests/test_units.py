"""Pure pieces: ABI packing and export checks, protocol parsing, back-off, load planning."""

from __future__ import annotations

import pytest

from hotload import RevisionId, abi, plan_load, protocol


def test_pack_round_trips_including_high_bit_pointers() -> None:
    for p, n in [(0, 0), (1024, 5), (0xFFFF_FFFF, 0xFFFF_FFFF), (0x8000_0000, 1)]:
        assert abi.unpack(abi.pack(p, n)) == (p, n)


def test_checked_range_rejects_out_of_bounds_and_overflow() -> None:
    assert abi.checked_range(10, 5, 15) == range(10, 15)
    assert abi.checked_range(10, 6, 15) is None
    assert abi.checked_range(0xFFFF_FFFF, 0xFFFF_FFFF, 1 << 20) is None
    assert abi.checked_range(0, 0, 0) == range(0, 0)


MINIMAL = {"memory": "memory", "alloc": "(i32)->i32", "handle": "(i32,i32)->i64"}


def test_check_exports_names_the_offending_export() -> None:
    assert abi.check_exports(MINIMAL) == abi.Capabilities()
    caps = abi.check_exports(
        {**MINIMAL, "self_check": "()->i32", "restore_state": "(i32,i32)->i32"}
    )
    assert caps.self_check and caps.restore_state and not caps.save_state
    with pytest.raises(abi.AbiViolation, match=r"missing export `handle` \(i32,i32\)->i64"):
        abi.check_exports({k: v for k, v in MINIMAL.items() if k != "handle"})
    with pytest.raises(abi.AbiViolation, match="has signature \\(\\)->i64, want \\(\\)->i32"):
        abi.check_exports({**MINIMAL, "self_check": "()->i64"})


def test_hello_is_v2_with_the_worker() -> None:
    assert protocol.hello("shop", "4711") == {
        "type": "hello",
        "app": "shop",
        "worker": "4711",
        "protocol": 2,
    }


def test_parse_refuses_what_cannot_be_answered() -> None:
    msg = protocol.parse(b'{"type":"load","plugin":"a","revision":"r1","path":"/p","digest":"d"}')
    assert (msg.plugin, msg.revision, msg.path, msg.config) == ("a", "r1", "/p", None)
    assert protocol.parse(b'{"type":"load","plugin":"a","revision":"r1"}').path is None
    for bad in [
        b"hello?",
        b"\xff\xfe",
        b'{"type":"reboot"}',
        b'{"type":"load","plugin":"a"}',
        b"[]",
    ]:
        with pytest.raises(protocol.Unusable):
            protocol.parse(bad)


def test_config_is_compact_json_and_null_is_empty() -> None:
    assert protocol.config_bytes(None) == b""
    assert protocol.config_bytes({"threshold": 3, "n": "é"}) == '{"threshold":3,"n":"é"}'.encode()
    assert protocol.config_bytes(False) == b"false"


def test_backoff_doubles_from_50_ms_to_2_s() -> None:
    delays, d = [], 0.0
    for _ in range(8):
        d = protocol.next_backoff(d)
        delays.append(d)
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]


def test_plan_load_compares_revision_digest_and_config() -> None:
    rid = RevisionId("p", "r1", "sha256:x", b"a")
    assert plan_load(rid, rid) == "already_serving"
    assert plan_load(None, rid) == "swap"
    assert plan_load(rid, RevisionId("p", "r1", "sha256:x", b"b")) == "swap"
