"""Smoke tests of issue 17's instruments: the Go load generator, the bare Trio servers, the
engine-limit run and the idle-gossip measurement, with tiny counts so they cannot rot.

Not benchmarks: nothing here checks a speed. What is checked is that every part runs and
tells the truth: the generator counts what it gets, catches error replies, replies out of
order and a server that hangs up; the bare servers are correct (gate, Seq echo, order, bodies
split anywhere); the run measures every cell of every server kind and writes its report.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from go_programs import require_go
from hypothesis import given, settings, strategies as st

REPO_ROOT = Path(__file__).resolve().parents[2]

from benchmarks import bare_servers, engine_limit, go_build, gossip_idle, servers  # noqa: E402
from benchmarks.wire import encode_request  # noqa: E402

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def loadgen() -> Path:
    require_go()
    return go_build.loadgen_binary(REPO_ROOT)


def reply(seq: int, error: str = "") -> bytes:
    return bytes(msgpack.packb({"Error": error, "Seq": seq}))


async def run_generator(binary: Path, mode: str, port: int, *args: str) -> tuple[int, Any]:
    done = await trio.run_process(
        [str(binary), mode, "-addr", f"{HOST}:{port}", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return done.returncode, json.loads(done.stdout.decode().strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the generator


async def scripted_server(
    replies: dict[int, bytes],
    bodies: list[bytes] | None = None,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answers the handshake, then every request with ``replies.get(seq)`` (default: a clean
    reply, followed by the next of ``bodies`` when given)."""

    async def handler(stream: trio.SocketStream) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        header: Any = None
        answered = 0
        with trio.move_on_after(30):
            while data := await stream.receive_some(65536):
                unpacker.feed(data)
                for obj in unpacker:
                    if header is None:
                        header = obj
                        if header["Command"] != "handshake" and bodies is not None:
                            obj = None  # no request body: answer now
                        else:
                            continue
                    seq = header["Seq"]
                    header = None
                    out = replies.get(seq, reply(seq))
                    if bodies is not None and seq != 1:
                        out += bodies[answered % len(bodies)]
                        answered += 1
                    # With bodies, the first bytes go a few at a time (reads end mid-object).
                    cuts = list(range(0, min(len(out), 40), 5)) if bodies else [0]
                    for start, end in itertools.pairwise([*cuts, len(out)]):
                        await stream.send_all(out[start:end])

    listeners = await trio.open_tcp_listeners(0, host=HOST)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(listeners[0].socket.getsockname()[1])


async def test_generator_counts_error_replies_and_replies_out_of_order(loadgen: Path) -> None:
    # Seq 5 and 6 come back swapped (in one write), Seq 9 with an error.
    script = {5: reply(6), 6: reply(5), 9: reply(9, "boom")}
    async with trio.open_nursery() as nursery:
        port = await nursery.start(scripted_server, script)
        for mode, extra in (("pipelined", ("-depth", "1")), ("sequential", ())):
            code, result = await run_generator(
                loadgen, mode, port, "-max-requests", "20", "-warmup", "0", "-duration", "5",
                *extra,
            )  # fmt: skip
            assert code == 0 and result["ok"], result
            assert result["replies"] == 20 and result["capped"]
            assert result["errors"] == 1 and result["first_error"] == "boom"
            assert result["out_of_order"] == 2 and result["in_order"] is False
        code, result = await run_generator(
            loadgen, "pipelined", port, "-max-requests", "300", "-depth", "100",
            "-warmup", "0", "-duration", "5",
        )  # fmt: skip
        assert code == 0 and result["replies"] == 300 and result["counted"] == 300
        nursery.cancel_scope.cancel()


def every_kind_of_msgpack_object() -> list[bytes]:
    """A body of each msgpack type and size class (and nestings of them), encoded."""
    pack = msgpack.Packer(use_bin_type=True).pack
    single = msgpack.Packer(use_single_float=True).pack
    values: list[Any] = [
        None, True, False, 0, 127, 128, 255, 256, 65535, 65536, 2**32, 2**64 - 1,
        -1, -32, -33, -128, -129, -32768, -32769, -(2**31) - 1, -(2**63),
        1.5, "", "x" * 31, "x" * 32, "x" * 255, "x" * 256, "x" * 70_000,
        b"", b"b" * 255, b"b" * 256, b"b" * 70_000, [], list(range(15)), list(range(16)),
        list(range(70_000)), {}, {str(i): i for i in range(15)}, {str(i): i for i in range(16)},
        {str(i): [i, {"deep": [None, b"x"]}] for i in range(70_000)},
        {"Members": [{"Name": "a", "Addr": b"\x7f\0\0\1", "Tags": {"k": "v"}}]},
    ]  # fmt: skip
    encoded = [pack(value) for value in values]
    encoded.append(single(2.5))
    encoded += [pack(msgpack.ExtType(5, b"e" * size)) for size in (1, 2, 4, 8, 16, 3, 300, 70_000)]
    return encoded


async def test_generator_skips_every_kind_of_reply_body(loadgen: Path) -> None:
    bodies = every_kind_of_msgpack_object()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(scripted_server, {}, bodies)
        for mode, depth in (("pipelined", "7"), ("sequential", "1")):
            code, result = await run_generator(
                loadgen, mode, port, "-command", "stats", "-body", "", "-reply-body",
                "-depth", depth, "-max-requests", str(2 * len(bodies)), "-warmup", "0",
                "-duration", "20", "-read-size", "4096",
            )  # fmt: skip
            assert code == 0, result
            assert result["replies"] == 2 * len(bodies) and result["capped"]
            assert result["errors"] == 0 and result["in_order"], result
        nursery.cancel_scope.cancel()


async def test_generator_fails_loudly_when_the_server_hangs_up(loadgen: Path) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(bare_servers.serve_raw, HOST, 0)
        # The bare server supports handshake and stop only: it answers "Unsupported command"
        # and closes, which the generator must report as a failed measurement.
        code, result = await run_generator(
            loadgen, "pipelined", port, "-command", "members-lan", "-body", "",
            "-reply-body", "-max-requests", "10",
        )  # fmt: skip
        assert code == 1 and result == {"ok": False, "error": result["error"]}
        assert "closed the connection" in result["error"]
        nursery.cancel_scope.cancel()


async def test_generator_reads_reply_bodies_from_a_real_agent(loadgen: Path) -> None:
    server = await trio.to_thread.run_sync(servers.start, "agentrpc")
    try:
        for command in ("members-lan", "stats"):
            for mode in ("pipelined", "sequential"):
                code, result = await run_generator(
                    loadgen, mode, server.port, "-command", command, "-body", "",
                    "-reply-body", "-depth", "50", "-max-requests", "200", "-warmup", "0",
                    "-duration", "5", "-cpu-pid", str(server.pid),
                )  # fmt: skip
                assert code == 0, result
                assert result["replies"] == 200 and result["errors"] == 0, result
                assert result["in_order"] and result["server_cpu_s"] > 0
        code, result = await run_generator(
            loadgen, "selfcheck", server.port, "-command", "stats", "-body", "",
            "-reply-body", "-copies", "1000",
        )  # fmt: skip
        assert code == 0 and result["errors"] == 0 and result["reply_bytes"] > 200
    finally:
        await trio.to_thread.run_sync(servers.stop, server)


# ----------------------------------------------------------------------------- bare servers


def request(command: str, seq: int, body: Any = None) -> bytes:
    return encode_request(command, seq, body)


async def exchange(port: int, data: bytes, replies: int) -> list[Any]:
    """Send ``data`` in 7-byte pieces (every frame boundary crossed) and read until
    ``replies`` objects or EOF."""
    stream = await trio.open_tcp_stream(HOST, port)
    unpacker = msgpack.Unpacker(raw=False)
    got: list[Any] = []
    async with stream:
        with trio.fail_after(10):
            try:
                for offset in range(0, len(data), 7):
                    await stream.send_all(data[offset : offset + 7])
            except trio.BrokenResourceError:
                pass  # the server closed first (after a reply that closes): read what came
            while len(got) < replies:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                unpacker.feed(chunk)
                got.extend(unpacker)
    return got


@pytest.mark.parametrize("kind", ["streams", "raw"])
async def test_bare_servers_are_correct(kind: str) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(bare_servers.SERVERS[kind], HOST, 0)
        stops = b"".join(request("stop", seq, {"Stop": 0}) for seq in range(2, 1002))
        got = await exchange(port, request("handshake", 1, {"Version": 1}) + stops, 1001)
        assert got == [{"Error": "", "Seq": seq} for seq in range(1, 1002)]
        # The handshake gate and the version check, as the reference words them.
        got = await exchange(port, request("stop", 7, {"Stop": 0}), 1)
        assert got == [{"Error": "Handshake required", "Seq": 7}]
        got = await exchange(
            port, request("handshake", 1, {"Version": 2}) + request("handshake", 2, {"Version": 1})
            + request("handshake", 3, {"Version": 1}) + request("members-lan", 4)
            + request("stop", 5, {"Stop": 0}), 5,
        )  # fmt: skip
        assert got == [
            {"Error": "Unsupported RPC version", "Seq": 1},
            {"Error": "", "Seq": 2},
            {"Error": "Handshake already performed", "Seq": 3},
            {"Error": "Unsupported command", "Seq": 4},  # and the connection closed
        ]
        # Garbage closes that connection only, without a reply.
        assert await exchange(port, b"\xc1" * 10, 1) == []
        got = await exchange(port, request("handshake", 1, {"Version": 1}), 1)
        assert got == [{"Error": "", "Seq": 1}]
        nursery.cancel_scope.cancel()


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_bare_session_answers_the_same_however_the_bytes_are_cut(cuts: list[int]) -> None:
    data = request("handshake", 1, {"Version": 1}) + b"".join(
        request("stop", seq, {"Stop": seq}) for seq in range(2, 12)
    )
    expected = b"".join(reply(seq) for seq in range(1, 12))
    session = bare_servers.Session()
    out = bytearray()
    edges = sorted({0, len(data), *(min(cut, len(data)) for cut in cuts)})
    for start, end in itertools.pairwise(edges):
        replies, close = session.receive(data[start:end])
        assert not close
        out += replies
    assert bytes(out) == expected


# ----------------------------------------------------------------------------- the runs


def check_limit_results(results: dict[str, Any], names: tuple[str, ...]) -> None:
    json.dumps(results)
    plan = results["plan"]
    keys = {cell.key for cell in engine_limit.cells(engine_limit.smoke_plan(names))}
    assert len(keys) == 4  # depth 10, depth 1 on the same CPU, sequential on either CPU
    throughput = [e for e in results["entries"] if e["group"] == "throughput"]
    assert {(e["key"], e["server"]) for e in throughput} == {(k, n) for k in keys for n in names}
    for entry in throughput:
        assert not entry["failures"], entry
        assert len(entry["values"]) == plan["rounds"] and entry["median"] > 0
        for run in entry["runs"]:
            assert run["errors"] == 0 and run["in_order"] and run["replies"] > 0
            assert run["server_cpu_s"] > 0 and "other_cores" in run
    cpu = {(e["key"], e["server"]) for e in results["entries"] if e["group"] == "cpu"}
    assert cpu == {(k, n) for k in keys for n in names}
    assert results["selfcheck"] and results["selfcheck"][0]["rate"] > 0
    assert results["versions"]["go"].startswith("go version")
    assert results["placement"]["pinned"] == (len(os.sched_getaffinity(0)) >= 2)


def test_one_cell_of_each_kind_against_every_server(
    serf_binary: str, loadgen: Path, tmp_path: Path
) -> None:
    names = engine_limit.SERVERS
    assert set(names) == {"agentrpc", "serf", "trio-streams", "trio-raw", "go-bare"}
    results = engine_limit.run_limit(engine_limit.smoke_plan(names), out=None)
    check_limit_results(results, names)
    ratios = {row["key"]: row for row in results["comparisons"] if row["server"] == "agentrpc"}
    for row in ratios.values():
        assert row["serf_ratio"] > 0 and row["best_bare_ratio"] > 0 and row["raw_ratio"] > 0
    measured = [t for t in results["targets"] if t["met"] is not None]
    assert {t["server"] for t in results["targets"]} == {"agentrpc"}
    assert {t["key"] for t in measured} == {"stop depth 10", "stop depth 1, same CPU"}
    written = engine_limit.write_all(results, tmp_path)
    assert {path.name for path in written} == {"results.json", "report.md"}
    text = (tmp_path / "report.md").read_text()
    for heading in (
        "## Targets (issue 17)",
        "## Requests per second",
        "## Server CPU per request (microseconds)",
        "## The generator's ceiling",
    ):
        assert heading in text
    assert "Against the trivial Go server" in text


def test_a_baseline_revision_beside_this_tree(loadgen: Path, tmp_path: Path) -> None:
    commit = servers.prepare_baseline("HEAD")
    names = ("agentrpc", servers.BASELINE)
    results = engine_limit.run_limit(engine_limit.smoke_plan(names), out=None)
    check_limit_results(results, names)
    assert results["versions"]["baseline_revision"] == commit
    rows = [row for row in results["comparisons"] if row["server"] == "agentrpc"]
    assert rows and all(row["baseline_ratio"] > 0 for row in rows)
    engine_limit.write_all(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "### This tree over the baseline" in text and f"agentrpc @ {commit[:12]}" in text


def test_the_command_line_writes_its_report(loadgen: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.engine_limit", "--quick", "--rounds", "1",
         "--servers", "trio-raw,go-bare", "--depths", "4", "--out", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["plan"]["depths"] == [4] and results["plan"]["servers"] == [
        "trio-raw",
        "go-bare",
    ]
    assert all(not entry["failures"] for entry in results["entries"])


def test_idle_gossip_of_a_small_mixed_cluster(serf_binary: str, tmp_path: Path) -> None:
    plan = gossip_idle.IdlePlan(
        seconds=1.0, settle=0.0, serf_nodes=1, agent_nodes=2, quiet_wait=0.0
    )
    results = gossip_idle.run_idle(plan, out=None)
    (measurement,) = results["measurements"]
    assert measurement["all_alive_at_end"]
    assert [node["kind"] for node in measurement["nodes"]] == ["serf", "agentrpc", "agentrpc"]
    assert all(node["cpu_s"] > 0 for node in measurement["nodes"])
    assert results["summary"]["agentrpc"]["ratio"] > 0
    gossip_idle.write_all(results, tmp_path)
    assert "agentrpc / serf" in (tmp_path / "report.md").read_text()
