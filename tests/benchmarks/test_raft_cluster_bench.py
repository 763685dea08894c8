"""Smoke test of ``benchmarks/raft_cluster.py`` (issue 13's cluster benchmark), tiny counts.

Not a benchmark: nothing here checks a speed. It runs real 3-server clusters on 127.0.0.1 (the
agentrpc child processes of the module and, when Go is installed, the Go hashicorp/raft
program), and checks that every cell measured what it says: commits counted in the window,
ordered percentiles, no failed writer, the cluster's own log past what was counted, the
results dict and the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
from go_programs import require_go

REPO_ROOT = Path(__file__).resolve().parents[2]

from benchmarks import raft_cluster  # noqa: E402


def check_cell(cell: dict[str, Any], implementation: str, writers: int) -> None:
    assert cell["implementation"] == implementation
    assert cell["writers"] == writers
    assert cell["errors"] == 0, cell["error"]
    assert cell["commits"] > 0
    assert cell["seconds"] > 0
    assert abs(cell["per_second"] - cell["commits"] / cell["seconds"]) < 1e-6
    assert 0 < cell["p50_us"] <= cell["p99_us"] <= cell["max_us"]
    # The leader's log holds the bootstrap, its noop, the warm-up and the window at least.
    assert cell["last_index"] > cell["commits"]
    assert cell["leader_cpu_cores"] > 0 and cell["followers_cpu_cores"] > 0
    assert cell["load_wall_seconds"] >= cell["seconds"]
    assert int(cell["leader_stats"]["commit_index"]) >= cell["commits"]
    if implementation == "agentrpc":
        assert cell["command_bytes"] == raft_cluster.ENTRY_BYTES
        assert cell["leader_transactions"] > 0
        # About one entry per transaction or more (a window edge or a term write can make
        # it a hair under 1 at one writer; grouping itself: tests/raft/test_engine_batching.py).
        assert cell["leader_entries_per_transaction"] > 0.9
        assert cell["leader_sends_per_entry"] > 0


def check_results(results: dict[str, Any], out: Path, implementations: list[str]) -> None:
    assert results["implementations"] == implementations
    json.dumps(results)
    written = json.loads((out / "results.json").read_text())
    assert written["cells"] == results["cells"]
    for implementation in implementations:
        for writers in results["writers"]:
            key = f"{implementation}/{writers}"
            cells = results["cells"][key]
            assert len(cells) == results["rounds"]
            for cell in cells:
                check_cell(cell, implementation, writers)
            median = results["medians"][key]
            assert median["per_second_min"] <= median["per_second"] <= median["per_second_max"]
    text = (out / "report.md").read_text()
    assert text.startswith("# Raft cluster")
    for writers in results["writers"]:
        for implementation in implementations:
            assert f"| {writers} | {implementation} |" in text
    assert results["machine"]["cpu_count"] >= 1


def test_the_command_is_a_kv_set_of_the_entry_size() -> None:
    for slot in (0, 7, 63):
        data = raft_cluster.command_for(slot, raft_cluster.ENTRY_BYTES)
        assert len(data) == raft_cluster.ENTRY_BYTES
        op, key, value = msgpack.unpackb(data, raw=False)
        assert (op, key) == ("set", f"w{slot}") and set(value) == {"x"}


def test_agentrpc_cluster_tiny(tmp_path: Path) -> None:
    out = tmp_path / "out"
    plan = raft_cluster.PLANS["tiny"]
    results = raft_cluster.run(plan, "tiny", tmp_path, out, ("agentrpc",))
    check_results(results, out, ["agentrpc"])
    assert results["comparisons"] == []
    assert all(target["met"] is None for target in results["targets"])
    # A fresh directory per cell, removed afterwards.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_beside_the_go_cluster_with_ratios_and_targets(tmp_path: Path) -> None:
    require_go()
    out = tmp_path / "out"
    plan = raft_cluster.Plan(rounds=1, window=0.3, warmup=0.2, writers=(1, 64))
    results = raft_cluster.run(plan, "tiny", tmp_path, out, raft_cluster.IMPLEMENTATIONS)
    assert not results["note"], results["note"]
    check_results(results, out, list(raft_cluster.IMPLEMENTATIONS))
    assert [row["writers"] for row in results["comparisons"]] == [1, 64]
    for row in results["comparisons"]:
        assert row["throughput_ratio"] > 0 and row["p99_ratio"] > 0
    assert all(target["met"] is not None for target in results["targets"])
    text = (out / "report.md").read_text()
    assert "Issue 13's targets" in text and "x |" in text
