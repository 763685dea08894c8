"""A short run of the decoder fuzzer (the long run is scripts/fuzz_decoders.py)."""

from __future__ import annotations

import importlib.util
import sys
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
