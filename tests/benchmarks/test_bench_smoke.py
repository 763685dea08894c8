"""Smoke test of the benchmark suite: the quick machinery with tiny counts, so it cannot rot.

Not a benchmark: nothing here checks a speed. It runs every part of ``benchmarks/`` (load
generator process, sequential and pipelined jobs, idle connections, monitor stream, in-memory
engine, report) against agentrpc with a few hundred requests, and checks the results dict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]

from benchmarks import report, suite  # noqa: E402

GROUPS = {"throughput", "latency", "idle", "monitor", "engine", "client"}


def check_well_formed(results: dict[str, Any], servers: tuple[str, ...]) -> None:
    json.dumps(results)  # serialisable as it is
    assert results["schema"] == suite.SCHEMA
    assert results["machine"]["cpu_count"] >= 1 and results["machine"]["cpu_model"]
    for name in ("python", "trio", "msgpack", "serf", "agentrpc_revision"):
        assert results["versions"][name]
    plan = results["plan"]
    entries = results["entries"]
    # A part that failed leaves its group out and says why in the notes.
    assert {entry["group"] for entry in entries} == GROUPS, results["notes"]
    assert {entry["server"] for entry in entries} == set(servers)
    for entry in entries:
        assert not entry["failures"], entry
        runs = 1 if entry["group"] == "client" else plan["runs"]
        assert len(entry["values"]) == runs, entry
        assert all(value > 0 for value in entry["values"]), entry
        assert entry["min"] <= entry["median"] <= entry["max"]
    cells = suite.throughput_cells(suite.smoke_plan(servers), pinned=results["placement"]["pinned"])
    for server in servers:
        measured = {
            e["key"] for e in entries if e["group"] == "throughput" and e["server"] == server
        }
        assert measured == {cell["key"] for cell in cells}
    for entry in entries:
        if entry["group"] == "throughput" and entry["params"]["kind"] == "pipelined":
            assert all(run["in_order"] and run["errors"] == 0 for run in entry["runs"])
    assert results["targets"], "the targets are always evaluated"


def test_quick_machinery_for_agentrpc(tmp_path: Path) -> None:
    results = suite.run_suite(suite.smoke_plan(("agentrpc",)), out=None)
    check_well_formed(results, ("agentrpc",))
    monitor = next(e for e in results["entries"] if e["group"] == "monitor")
    assert monitor["runs"][0]["counted"] == results["plan"]["monitor_lines"]
    written = report.write_all(results, tmp_path, plot=False)
    assert {path.name for path in written} == {"results.json", "report.md"}
    assert json.loads((tmp_path / "results.json").read_text())["entries"] == results["entries"]
    text = (tmp_path / "report.md").read_text()
    for heading in ("## Targets", "## Throughput", "## Memory per idle connection"):
        assert heading in text


def test_the_serf_side_and_the_ratios(serf_binary: str, tmp_path: Path) -> None:
    results = suite.run_suite(suite.smoke_plan(("agentrpc", "serf")), out=None)
    check_well_formed(results, ("agentrpc", "serf"))
    ratios = [row for row in results["comparisons"] if row["group"] == "throughput"]
    assert ratios and all(row["ratio"] and row["ratio"] > 0 for row in ratios)
    assert all(target["met"] is not None for target in results["targets"])
    report.write_all(results, tmp_path, plot=False)
    assert "x |" in (tmp_path / "report.md").read_text()


def test_a_baseline_revision_runs_beside_this_tree(tmp_path: Path) -> None:
    from benchmarks import servers

    commit = servers.prepare_baseline("HEAD")
    results = suite.run_suite(suite.smoke_plan(("agentrpc", servers.BASELINE)), out=None)
    check_well_formed(results, ("agentrpc", servers.BASELINE))
    assert results["versions"]["baseline_revision"] == commit
    ratios = [row for row in results["comparisons"] if row["group"] == "throughput"]
    assert ratios and all(row["baseline_ratio"] > 0 for row in ratios)
    report.write_all(results, tmp_path, plot=False)
    assert f"## Against the baseline revision {commit[:12]}" in (tmp_path / "report.md").read_text()


def test_a_baseline_with_the_http_and_dns_flags_gets_them_turned_off() -> None:
    from benchmarks import servers

    servers.prepare_baseline("HEAD")
    # Several baseline agents run at once: on the default HTTP and DNS ports they would collide.
    assert servers.faces_off_flags(servers.BASELINE) == servers.NO_HTTP_NO_DNS_FLAGS
    assert servers.faces_off_flags("agentrpc") == servers.NO_HTTP_NO_DNS_FLAGS
    command = servers.command_for(servers.BASELINE, 8400)
    assert command[-4:] == list(servers.NO_HTTP_NO_DNS_FLAGS)
