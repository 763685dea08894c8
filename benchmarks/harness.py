"""What the stand-alone benchmarks (``raft_store``, ``raft_cluster``, ``kv_client``) share:
progress lines, percentiles, medians with their spread, and the facts about the machine a
report states.

Every run records the load average before and after each cell, since the machine is shared;
an unreadable ``/proc/loadavg`` gives ``-1.0`` (shown as unknown, never mistaken for idle).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["cpu_model", "loadavg", "machine_facts", "percentile", "say", "spread"]


def say(message: str) -> None:
    """A progress line on stderr (stdout is kept for results)."""
    print(message, file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The value at fraction ``q`` of the sorted samples (lower rank); 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of rounds' figures: a report gives all three."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def loadavg() -> float:
    """The 1-minute load average, or -1.0 when it cannot be read."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def cpu_model() -> str:
    """The first ``model name`` of /proc/cpuinfo ("" when there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine_facts() -> dict[str, Any]:
    """Architecture, CPUs, kernel and Python: the part of every report's header that does
    not depend on what is measured."""
    return {
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
