"""Shared fixtures for the gossip codec tests: the bytes captured from a real serf agent.

The files under ``data/`` were written by ``capture_fixtures.py`` (see its docstring);
``manifest.json`` holds the node names, ports, tags and key that were in play.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).parent / "data"


def _read_capture(name: str) -> bytes:
    return (DATA / name).read_bytes()


def _read_packets(name: str) -> list[bytes]:
    blob = _read_capture(name)
    packets = []
    offset = 0
    while offset < len(blob):
        (length,) = struct.unpack_from(">I", blob, offset)
        packets.append(blob[offset + 4 : offset + 4 + length])
        offset += 4 + length
    assert offset == len(blob)
    return packets


@pytest.fixture(scope="session")
def capture() -> Callable[[str], bytes]:
    """Read one captured file's bytes by name."""
    return _read_capture


@pytest.fixture(scope="session")
def captured_packets() -> Callable[[str], list[bytes]]:
    """Read captured UDP packets (stored as u32 BE length + bytes, back to back)."""
    return _read_packets


@pytest.fixture(scope="session")
def manifest() -> dict[str, Any]:
    """What the capture knew: names, ports, tags, the encryption key."""
    loaded: dict[str, Any] = json.loads((DATA / "manifest.json").read_text())
    return loaded
