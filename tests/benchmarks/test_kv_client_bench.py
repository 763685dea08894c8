"""Smoke test of ``benchmarks/kv_client.py`` (issue 14's client-agent KV benchmark), tiny counts.

Not a benchmark: nothing here checks a speed. It runs the real cluster of the module (3 servers
and a client agent, ``agentrpc serve`` processes on 127.0.0.1) with the ``tiny`` plan and
checks that every cell measured what it says: requests counted in the window, no error
answer, ordered percentiles, blocking GETs woken by the change they waited for, the CPU of
every agent, the results file and the report.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

from benchmarks import kv_client  # noqa: E402


def test_tiny_run_through_a_client_agent(tmp_path: Path) -> None:
    out = tmp_path / "out"
    plan = kv_client.PLANS["tiny"]
    results = kv_client.run(plan, "tiny", tmp_path, out)

    (round_,) = results["rounds"]
    assert [(c["callers"], c["kind"]) for c in round_["cells"]] == [
        (callers, kind) for callers in plan.callers for kind in kv_client.KINDS
    ]
    for cell in round_["cells"]:
        assert cell["errors"] == 0, cell["error"]
        assert cell["requests"] > 0
        assert abs(cell["per_second"] - cell["requests"] / plan.window) < 1e-6
        assert 0 < cell["p50_ms"] <= cell["p99_ms"]
    wakeup = round_["wakeup"]
    assert wakeup["samples"] == plan.samples
    assert wakeup["unchanged_answers"] == 0  # each GET was woken by its PUT, not a timeout
    assert 0 < wakeup["wakeup_p50_ms"] <= wakeup["wakeup_p99_ms"] < 60_000
    # Every request went through the client agent, which did work; so did the leader.
    assert set(round_["cpu_cores"]) == {"s1", "s2", "s3", "c1"}
    assert round_["cpu_cores"]["c1"] > 0
    assert results["leader"] in {"s1", "s2", "s3"}
    assert round_["cpu_cores"][results["leader"]] > 0

    written = json.loads((out / "results.json").read_text())
    assert written["medians"] == results["medians"]
    text = (out / "report.md").read_text()
    assert text.startswith("# KV through a client agent")
    for callers in plan.callers:
        for kind in kv_client.KINDS:
            assert f"| {callers} | {kind} |" in text
    assert "GET ?index= woken by a PUT" in text
    # The cluster's directory is removed afterwards.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
