"""Smoke test of ``benchmarks/dns_qps.py`` with tiny windows, so that it cannot rot. Not a
benchmark: nothing here checks a speed, only that every cell was measured and answered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_dns_benchmark_runs_every_cell(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.dns_qps", "--smoke", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    cells = results["cells"]
    assert set(cells) == {"node A", "service A", "service SRV", "big SRV", "core"}
    for label, by_clients in cells.items():
        expected = {"1"} if label == "core" else {"1", "32"}
        assert set(by_clients) == expected
        assert all(value > 0 for values in by_clients.values() for value in values), label
    assert "| service A |" in (tmp_path / "report.md").read_text()
