"""A short run of the decoder fuzzer (the long run is scripts/fuzz_decoders.py)."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fuzz_decoders.py"


def load_fuzzer():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("fuzz_decoders", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_decoders"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "target", ["rpc-request", "rpc-response", "gossip-packet", "gossip-stream"]
)
def test_decoders_survive_mutated_input(target: str, tmp_path: Path) -> None:
    fuzzer = load_fuzzer()
    ran, crashes = fuzzer.fuzz(target, 5000, seed=20261124, crash_dir=tmp_path)
    assert ran == 5000
    assert crashes == []


def test_the_fuzzer_finds_a_planted_crash(tmp_path: Path) -> None:
    fuzzer = load_fuzzer()
    seeds, _ = fuzzer.TARGETS["rpc-request"]

    def crashing(rng: object, data: bytes) -> None:
        raise RuntimeError("planted")

    fuzzer.TARGETS["planted"] = (seeds, crashing)
    _ran, crashes = fuzzer.fuzz("planted", 3, seed=1, crash_dir=tmp_path)
    assert len(crashes) == 3
    assert len(list(tmp_path.iterdir())) == 3


def test_a_slow_input_and_a_hang_are_findings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fuzzer = load_fuzzer()
    seeds, _ = fuzzer.TARGETS["rpc-request"]
    monkeypatch.setattr(fuzzer, "SLOW_INPUT", 0.05)
    monkeypatch.setattr(fuzzer, "HANG_LIMIT", 0.2)

    def slow(rng: object, data: bytes) -> None:
        time.sleep(0.1)  # past SLOW_INPUT, then returns

    def spinning(rng: object, data: bytes) -> None:
        while True:  # never returns: the guard interrupts it after HANG_LIMIT
            pass

    fuzzer.TARGETS["slow"] = (seeds, slow)
    fuzzer.TARGETS["spinning"] = (seeds, spinning)
    _ran, slow_found = fuzzer.fuzz("slow", 2, seed=1, crash_dir=tmp_path)
    assert len(slow_found) == 2 and all("took" in finding for finding in slow_found)
    _ran, hung = fuzzer.fuzz("spinning", 1, seed=1, crash_dir=tmp_path)
    assert len(hung) == 1 and "InputHung" in hung[0]
