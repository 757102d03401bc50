"""Shared helpers: where the conformance cases live, plugin files, the reference tagger."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hotload import HostConfig, sha256_digest

ROOT = Path(__file__).resolve().parents[3]
CONFORMANCE = ROOT / "sdk" / "conformance"
PLUGINS = CONFORMANCE / "plugins"


def plugin_bytes(name: str) -> bytes:
    """A committed conformance plugin."""
    return (PLUGINS / name).read_bytes()


def digest_of(name: str) -> str:
    """sha256 digest of a conformance plugin."""
    return sha256_digest(plugin_bytes(name))


def suite() -> dict:
    """cases.json, checked for the format this runner reads."""
    data = json.loads((CONFORMANCE / "cases.json").read_text())
    assert data["format"] == 1, f"cases.json format {data['format']}, this runner reads 1"
    return data


def compiled_cache() -> Path:
    """Where the tests keep precompiled modules across runs (the host's `cache_dir`): the
    Go plugin takes seconds of CPU to compile, a warm run none."""
    base = os.environ.get("HOTLOAD_CACHE") or os.path.expanduser("~/.cache/hotload")
    return Path(base) / "python-sdk-compiled"


def host_config(settings: dict, **over: object) -> HostConfig:
    """A HostConfig from the cases.json `host` settings."""
    cfg = HostConfig(cache_dir=compiled_cache())
    if "max_memory_bytes" in settings:
        cfg.max_memory_bytes = settings["max_memory_bytes"]
    if "call_timeout_ms" in settings:
        cfg.call_timeout = settings["call_timeout_ms"] / 1000
    if "instances_per_revision" in settings:
        cfg.instances_per_revision = settings["instances_per_revision"]
    if "checkout_timeout_ms" in settings:
        cfg.checkout_timeout = settings["checkout_timeout_ms"] / 1000
    if "max_plugins" in settings:
        cfg.max_plugins = settings["max_plugins"]
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def tag_of(resp: bytes) -> tuple[str, bytes] | None:
    """(tag, body) of a tagger response whose two tags agree, else None (a mixed response)."""
    if len(resp) < 8 or resp[:4] != resp[-4:]:
        return None
    return resp[:3].decode(), resp[4:-4]


@pytest.fixture
def conformance_dir() -> Path:
    """The shared conformance directory."""
    return CONFORMANCE
