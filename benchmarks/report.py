"""Writes a suite's results: ``results.json`` (every run), ``report.md`` (tables) and a plot.

The plot needs matplotlib (the ``bench`` extra); without it the report says so and the rest
is still written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

NUMBER_FORMATS: dict[str, Callable[[float], str]] = {
    "replies/s": lambda v: f"{v:,.0f}",
    "lines/s": lambda v: f"{v:,.0f}",
    "us": lambda v: f"{v:,.1f}",
    "bytes": lambda v: f"{v:,.0f}",
}


def write_json(results: dict[str, Any], directory: Path) -> Path:
    """Write ``results.json`` (every run) into ``directory``, creating it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "results.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


def write_results(
    results: dict[str, Any], directory: Path, render: Callable[[dict[str, Any]], str]
) -> list[Path]:
    """Write ``results.json`` and ``report.md`` (``render``'s text): every benchmark's pair."""
    json_path = write_json(results, directory)
    report = directory / "report.md"
    report.write_text(render(results))
    return [json_path, report]


def environment_lines(results: dict[str, Any], versions_tail: str) -> list[str]:
    """A report header's machine and versions lines; ``versions_tail`` ends the versions
    line with what that benchmark adds (agentrpc's revision, Go ...)."""
    machine, versions = results["machine"], results["versions"]
    return [
        f"- Machine: {machine['cpu_count']} CPUs, {machine['cpu_model']}, "
        f"{machine['memory_bytes'] / 2**30:.0f} GiB, {machine['platform']}; load average "
        f"{machine['loadavg_start'][0]:.2f} at the start, {results['loadavg_end'][0]:.2f} at "
        "the end",
        f"- Versions: Python {versions['python']}, trio {versions['trio']}, msgpack "
        f"{versions['msgpack']}, serf {versions['serf']} (Debian package "
        f"{versions['serf_package'] or '-'})" + versions_tail,
    ]


def snapshot_text(versions: dict[str, Any]) -> str:
    """``agentrpc at `REV` [plus uncommitted changes] (snapshot sha256 `...`)[, baseline
    `REV`]``: which sources a benchmark that runs from a snapshot measured."""
    return (
        f"agentrpc at `{versions['agentrpc_revision'][:12]}`"
        + (" plus uncommitted changes" if versions["agentrpc_tree_modified"] else "")
        + f" (snapshot sha256 `{versions['agentrpc_snapshot_sha256']}`)"
        + (
            f", baseline `{versions['baseline_revision'][:12]}`"
            if versions.get("baseline_revision")
            else ""
        )
    )


def write_all(results: dict[str, Any], directory: Path, *, plot: bool = True) -> list[Path]:
    """Write results.json, report.md and (when ``plot``) throughput.png into ``directory``."""
    written = [write_json(results, directory)]
    plot_name = None
    if plot:
        try:
            plot_name = write_plot(results, directory / "throughput.png").name
            written.append(directory / plot_name)
        except ImportError:
            results.setdefault("notes", []).append(
                "plot skipped: matplotlib is not installed (pip install -e '.[bench]')"
            )
    path = directory / "report.md"
    path.write_text(render_markdown(results, plot_name))
    written.append(path)
    return written


# ----------------------------------------------------------------------------- helpers


def _baseline_section(results: dict[str, Any]) -> list[str]:
    """agentrpc against an older revision of itself (``--baseline REV``), when measured."""
    revision = results.get("versions", {}).get("baseline_revision")
    if not revision:
        return []
    lines = [
        "",
        f"## Against the baseline revision {revision[:12]}",
        "",
        "The same cells with agentrpc at the baseline revision as a third server, taking its "
        "turn cell by cell beside this tree and serf. *ratio* is this tree over the baseline "
        "(higher is better for throughput, lower for latency and memory).",
        "",
    ]
    ratios = {
        (row["group"], row["key"]): row.get("baseline_ratio")
        for row in results.get("comparisons", [])
    }
    rows = []
    for group in ("throughput", "latency", "idle"):
        for key, pair in _pairs(results, group):
            if "baseline" not in pair:
                continue
            rows.append(
                [
                    f"{group}: {key}",
                    _cell(pair.get("agentrpc")),
                    _cell(pair.get("baseline")),
                    _ratio_text(ratios.get((group, key))),
                ]
            )
    return lines + _table(["cell", "agentrpc", "baseline", "ratio"], rows)


def _entries(results: dict[str, Any], group: str) -> list[dict[str, Any]]:
    return [entry for entry in results["entries"] if entry["group"] == group]


def _pairs(results: dict[str, Any], group: str) -> list[tuple[str, dict[str, dict[str, Any]]]]:
    """Keys of a group in first-measured order, each with its entries by server."""
    ordered: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in _entries(results, group):
        ordered.setdefault(entry["key"], {})[entry["server"]] = entry
    return list(ordered.items())


def _ratio(results: dict[str, Any], group: str, key: str) -> float | None:
    for row in results.get("comparisons", []):
        if row["group"] == group and row["key"] == key:
            ratio = row["ratio"]
            return None if ratio is None else float(ratio)
    return None


def _cell(entry: dict[str, Any] | None, *, spread: bool = True) -> str:
    if entry is None:
        return "–"
    if entry["median"] is None:
        return "failed" if entry["failures"] else "–"
    show = NUMBER_FORMATS.get(entry["unit"], _general)
    text = show(entry["median"])
    if spread and len(entry["values"]) > 1:
        text += f" ({show(entry['min'])}–{show(entry['max'])})"
    if entry["failures"]:
        text += " ⚠"
    return text


def _general(value: float) -> str:
    return f"{value:,.3g}"


def _whole(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _cores(entry: dict[str, Any] | None, field: str = "server_cores") -> str:
    if not entry or not entry["runs"] or field not in entry["runs"][0]:
        return "–"
    values = sorted(run[field] for run in entry["runs"])
    return f"{values[len(values) // 2]:.2f}"


def _noise(*entries: dict[str, Any] | None) -> str:
    """The largest CPU use by other processes seen during any run of these entries."""
    values = [
        run["other_cores"]
        for entry in entries
        if entry
        for run in entry["runs"]
        if "other_cores" in run
    ]
    return f"{max(values):.2f}" if values else "–"


def _other_summary(results: dict[str, Any]) -> str:
    values = sorted(
        run["other_cores"]
        for entry in _entries(results, "throughput")
        for run in entry["runs"]
        if "other_cores" in run
    )
    if not values:
        return "not measured"
    return (
        f"median {values[len(values) // 2]:.2f} cores, max {values[-1]:.2f}; "
        f"{sum(v > 0.1 for v in values)} of {len(values)} measurements above 0.1"
    )


def _waits(results: dict[str, Any]) -> str:
    return ", ".join(f"{wait['waited_s']:.0f}" for wait in results.get("quiet_wait_per_run", []))


def _ratio_text(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}x"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


# ----------------------------------------------------------------------------- markdown


def render_markdown(results: dict[str, Any], plot_name: str | None) -> str:
    plan, versions = results["plan"], results["versions"]
    runs = plan["runs"]
    lines = [
        f"# agentrpc frame-throughput benchmark, {results['date']} ({results['mode']} mode)",
        "",
        f"Every figure is the **median of {runs} run{'s' if runs != 1 else ''}** "
        "(min–max in brackets; every run is in `results.json`). Ratios are agentrpc's median "
        "divided by serf's median from the same suite.",
        "",
        *environment_lines(
            results,
            f", agentrpc {versions['agentrpc']} at `{versions['agentrpc_revision'][:12]}`"
            + (
                " plus uncommitted changes (listed in `results.json`)"
                if versions["agentrpc_tree_modified"]
                else ""
            )
            + (
                f"; every run used one snapshot of those sources (sha256 "
                f"`{versions['agentrpc_snapshot_sha256']}`)"
                if "agentrpc_snapshot_sha256" in versions
                else ""
            ),
        ),
        f"- Other processes' CPU use during the throughput measurements: {_other_summary(results)}"
        f" (1-minute load average at the start of each run: "
        f"{', '.join(f'{v:.2f}' for v in results.get('loadavg_per_run', []))}; seconds "
        "waited before each run for other processes to use under 0.1 cores: "
        f"{_waits(results)})",
        f"- Started {results['started_at']}, took {results['duration_s'] / 60:.1f} min. Per "
        f"measurement: {plan['warmup']} s warm-up, then {plan['duration']} s on the clock "
        f"(at most {plan['max_requests']:,} requests per connection).",
        "",
        "## Targets",
        "",
    ]
    rows = []
    for target in results["targets"]:
        unit = (
            "lines/s"
            if target["group"] == "monitor"
            else ("bytes/conn" if target["group"] == "idle" else "replies/s")
        )
        command = target["key"].split(" ")[0] if target["group"] == "throughput" else ""
        verdict = target["verdict"]
        mark = "✅" if target["met"] else ("❌" if target["met"] is False else "–")
        rows.append(
            [
                target["target"]
                + (f" — `{command}`" if command else "")
                + (f" — {target['key']}" if target["group"] == "idle" else ""),
                f"{_whole(target['agentrpc'])} {unit}",
                _whole(target["serf"]),
                _ratio_text(target["ratio"]),
                f"{mark} {verdict}",
            ]
        )
    lines += _table(["target", "agentrpc", "serf", "ratio", "verdict"], rows)
    lines += [
        "",
        "## Throughput (replies per second)",
        "",
        "`stop` has a header-only reply (its request carries a body `{Stop: 0}`); `members` is "
        "agentrpc's `members-lan` and serf's `members` (one member), `stats` has the largest "
        "body. *Sequential* is one request at a time on one connection; *depth N* keeps N "
        "requests in flight on one connection; *C conns* runs C such connections at once. "
        "*cores* is CPU time over wall time (medians): the server's over the whole job, then "
        "the generator's over the clocked window. Each is pinned to one CPU, so 1.00 is "
        "saturated. A server well below 1.00 while the generator is near 1.00 means the cell is "
        "bound by the generator and by per-reply wake-ups (a server that writes each reply "
        "separately makes the client read each one separately), not by the server's CPU. "
        "*other load* is the most CPU (in cores) that processes outside the benchmark used "
        "during any run of that row (machine busy time minus server and generator); above "
        "about 0.1 the row was disturbed.",
        "",
    ]
    rows = []
    for key, pair in _pairs(results, "throughput"):
        ours, theirs = pair.get("agentrpc"), pair.get("serf")
        rows.append(
            [
                key,
                _cell(ours),
                _cell(theirs),
                _ratio_text(_ratio(results, "throughput", key)),
                f"{_cores(ours)} / {_cores(ours, 'client_cores')}",
                f"{_cores(theirs)} / {_cores(theirs, 'client_cores')}",
                _noise(ours, theirs),
            ]
        )
    lines += _table(
        [
            "mode",
            "agentrpc",
            "serf",
            "ratio",
            "cores: agentrpc / gen.",
            "cores: serf / gen.",
            "other load",
        ],
        rows,
    )
    if plot_name:
        lines += ["", f"![throughput vs pipeline depth and connections]({plot_name})"]
    lines += _baseline_section(results)
    lines += [
        "",
        "## Latency at depth 1 (microseconds per round trip, sequential mode)",
        "",
    ]
    rows = []
    for key, pair in _pairs(results, "latency"):
        ours, theirs = pair.get("agentrpc"), pair.get("serf")
        rows.append([key, _cell(ours), _cell(theirs), _ratio_text(_ratio(results, "latency", key))])
    lines += _table(["command, percentile", "agentrpc", "serf", "ratio (lower is better)"], rows)
    lines += [
        "",
        "## Memory per idle connection",
        "",
        "RSS of the server process (from `/proc/PID/statm`) after opening N handshaken "
        "connections that then sit idle, minus its RSS before, divided by N; a fresh server "
        "for every measurement.",
        "",
    ]
    rows = []
    for key, pair in _pairs(results, "idle"):
        ours, theirs = pair.get("agentrpc"), pair.get("serf")
        rows.append([key, _cell(ours), _cell(theirs), _ratio_text(_ratio(results, "idle", key))])
    lines += _table(
        ["connections", "agentrpc bytes/conn", "serf bytes/conn", "ratio (lower is better)"], rows
    )
    lines += ["", "## Monitor stream", ""]
    for entry in _entries(results, "monitor"):
        params = entry["params"]
        lines += [
            f"agentrpc: **{_cell(entry)} lines/s** to one fast reader in another process over "
            f"TCP (monitor at {params['level']}, {params['lines']:,} lines per run).",
            "",
            "Load source: a separate agentrpc process runs an in-process `Agent` on TCP; once "
            "the reader's monitor is subscribed, a task logs a start marker, then the lines "
            "(realistic ~85-character INFO messages) through `agent.hub.logger(...).info(...)`, "
            f"yielding to the scheduler every {params['producer_batch']} lines, then a done "
            "marker. The reader's clock runs from the start marker to the last line before the "
            "done marker; the replayed ring is not counted. Lines the hub dropped (queue full) "
            "would be listed as failures below and are not counted as delivered.",
            "",
            "serf: not measured. Its log can only be fed by its own activity (for example "
            "each `event` RPC logs a line or two), so a serf figure would measure its event "
            "path, not its monitor stream; the target is absolute.",
        ]
    lines += [
        "",
        "## In-memory transport: the engine's own ceiling",
        "",
        "An in-process client on `await agent.connect()` (no socket, no second process) "
        "pipelines pre-encoded requests and counts replies as the load generator does. Client "
        "and engine share one thread, so the client's cost is included.",
        "",
    ]
    rows = []
    for key, pair in _pairs(results, "engine"):
        entry = pair["agentrpc"]
        tcp_key = f"{entry['params']['command']} depth {entry['params']['depth']}"
        tcp = next(
            (p.get("agentrpc") for k, p in _pairs(results, "throughput") if k == tcp_key), None
        )
        rows.append([key, _cell(entry), _cell(tcp, spread=False)])
    lines += _table(["command, depth", "in-memory replies/s", "same over TCP"], rows)
    lines += [
        "",
        "## The load generator's own ceiling",
        "",
        "A real reply of each server, repeated, parsed from memory by the generator's code "
        "(no server, no socket): how fast the client can count replies. Every server rate "
        "above should stay well below this.",
        "",
    ]
    rows = []
    for key, pair in _pairs(results, "client"):
        rows.append([key, _cell(pair.get("agentrpc")), _cell(pair.get("serf"))])
    lines += _table(["reply", "agentrpc's bytes", "serf's bytes"], rows)
    failures = [
        f"- {entry['server']}, {entry['key']}: {failure}"
        for entry in results["entries"]
        for failure in entry["failures"]
    ]
    notes = [f"- {note}" for note in results.get("notes", [])]
    if failures or notes:
        lines += ["", "## Failures and notes", "", *failures, *notes]
    lines += [
        "",
        "## Method",
        "",
        "- One load generator process (`benchmarks/loadgen.py`) drives every server with the "
        "same code: requests pre-encoded before the clock starts, non-blocking sockets in one "
        "epoll loop, `recv_into` a 1 MiB buffer, a streaming `msgpack.Unpacker` that decodes "
        "reply headers (to check Error) and skips bodies, the garbage collector off while "
        "measuring.",
        "- Servers: `python -m agentrpc.cli serve --log-level warn` (with a config file that "
        f"raises its connection caps to {results['agentrpc_config']}) and `serf agent "
        "-log-level=warn`, both on 127.0.0.1, started fresh for every run. One measurement at "
        "a time; the servers take turns cell by cell and the order flips every cell and run.",
        "- A rate is the replies counted between the end of the warm-up and the end of the "
        "window, over that interval; requests still in flight at the end are drained and not "
        "counted.",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plot


def write_plot(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan = results["plan"]
    figure, (by_depth, by_conns) = plt.subplots(1, 2, figsize=(13, 5.2))
    colours = {"stop": "tab:blue", "members": "tab:green", "stats": "tab:red"}
    styles = {"agentrpc": "-", "serf": "--", "baseline": ":"}
    markers = {"agentrpc": "o", "serf": "s", "baseline": "^"}
    index = {(entry["group"], entry["key"], entry["server"]): entry for entry in results["entries"]}

    def series(
        keys: list[str], xs: list[int], server: str
    ) -> tuple[list[int], list[float], list[list[float]]]:
        points: list[int] = []
        medians: list[float] = []
        spread: list[list[float]] = [[], []]
        for x, key in zip(xs, keys, strict=True):
            entry = index.get(("throughput", key, server))
            if entry is None or entry["median"] is None:
                continue
            points.append(x)
            medians.append(entry["median"] / 1e3)
            spread[0].append((entry["median"] - entry["min"]) / 1e3)
            spread[1].append((entry["max"] - entry["median"]) / 1e3)
        return points, medians, spread

    def draw(axes: Any, keys: list[str], xs: list[int], server: str, command: str) -> None:
        """One server's line for one command: medians with min-max bars (none if unmeasured)."""
        points, medians, spread = series(keys, xs, server)
        if points:
            axes.errorbar(
                points,
                medians,
                yerr=spread,
                color=colours.get(command),
                capsize=3,
                linestyle=styles[server],
                marker=markers[server],
                label=f"{server} {command}",
            )

    for command in plan["commands"]:
        for server in plan["servers"]:
            depths = list(plan["depths"])
            draw(by_depth, [f"{command} depth {d}" for d in depths], depths, server, command)
            depth = plan["connection_depth"]
            counts = [1, *plan["connection_counts"]]
            keys = [f"{command} depth {depth}"] + [
                f"{command} {c} conns x depth {depth}" for c in plan["connection_counts"]
            ]
            draw(by_conns, keys, counts, server, command)
    by_depth.set_xscale("log")
    by_depth.set_xlabel("requests in flight on one connection (pipeline depth)")
    by_depth.set_ylabel("thousand replies per second (median, min–max bars)")
    by_depth.set_title("Throughput vs pipeline depth (1 connection)")
    by_conns.set_xscale("log", base=2)
    by_conns.set_xticks([1, *plan["connection_counts"]])
    by_conns.set_xticklabels([str(c) for c in [1, *plan["connection_counts"]]])
    by_conns.set_xlabel(f"connections (depth {plan['connection_depth']} each)")
    by_conns.set_title("Throughput vs connection count")
    for axes in (by_depth, by_conns):
        axes.grid(True, which="both", alpha=0.3)
        axes.set_ylim(bottom=0)
        axes.legend(fontsize=8)
    figure.suptitle(
        f"agentrpc vs serf, {results['date']}, {results['machine']['cpu_count']} CPUs "
        f"({results['mode']} mode, {plan['runs']} runs, medians)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
