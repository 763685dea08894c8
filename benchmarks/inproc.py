"""In-process benchmarks of agentrpc: the monitor line source, and the engine's own ceiling.

``python -m benchmarks.inproc monitor-server --port P --lines N``
    Runs an ``agentrpc.Agent`` (RPC on ``127.0.0.1:P``, log level WARN) in this process. Once a
    monitor subscribes, a task logs a start marker, ``N`` realistic INFO lines into the agent's
    hub (``agent.hub.logger("bench").info(...)``, yielding to the scheduler every
    ``--batch`` lines so the stream task can send) and a done marker. The reader is the load
    generator, in another process, over TCP. Prints one JSON line of its own counters (lines
    emitted, lines the hub dropped for a slow reader) when the reader has gone.

``python -m benchmarks.inproc engine --spec JSON``
    The in-memory transport alone: an in-process client on ``await agent.connect()`` (no
    socket) pipelines pre-encoded requests at the engine and counts replies the same way the
    load generator does. Client and agent share one thread, so this is a lower bound of the
    engine's ceiling with the cost of the client included. Prints one JSON line per case.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from typing import Any

import trio

from agentrpc.agent import Agent
from agentrpc.config import load_config

from .loadgen import DONE_MARK, START_MARK
from .wire import READ_SIZE, ReplyCounter, encode_request, encode_requests


def make_agent(rpc_addr: str, *, quiet: bool) -> Agent:
    overrides: dict[str, Any] = {
        "node_name": "bench",
        "rpc_addr": rpc_addr,
        "serf_lan_addr": "127.0.0.1:0",
        "serf_wan_addr": "127.0.0.1:0",
        "http_addr": "",
        "dns_addr": "",
        "log_level": "WARN",
    }
    config = load_config([], overrides)
    return Agent(config, overrides=overrides, log_sink=io.StringIO() if quiet else None)


# ----------------------------------------------------------------------------- monitor source


async def monitor_server(port: int, lines: int, batch: int, wait: float) -> dict[str, Any]:
    agent = make_agent(f"127.0.0.1:{port}", quiet=False)
    result: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        hub = agent.hub
        with trio.fail_after(wait):
            while hub.subscriber_count == 0:  # noqa: ASYNC110 - the hub has no such event
                await trio.sleep(0.005)
        await trio.sleep(0.2)  # the replayed ring goes out before the clock starts
        log = hub.logger("agent.bench")
        dropped_before = hub.monitor_dropped
        started = time.perf_counter()
        log.info(START_MARK)
        for index in range(lines):
            log.info(
                f"EventMemberJoin: bench-node-{index % 97} 127.0.0.1:{8301 + index % 97} "
                f"(line {index})"
            )
            if index % batch == batch - 1:
                await trio.lowlevel.checkpoint()
        produced = time.perf_counter() - started
        await trio.sleep(0.1)  # the reader's clock stops at the last line before the marker
        log.info(DONE_MARK)
        with trio.move_on_after(wait):
            while hub.subscriber_count:  # noqa: ASYNC110 - the hub has no such event
                await trio.sleep(0.01)
        result = {
            "emitted": lines,
            "dropped": hub.monitor_dropped - dropped_before,
            "produce_seconds": produced,
            "batch": batch,
        }
        agent.shutdown()
    return result


# ----------------------------------------------------------------------------- engine ceiling


async def engine_case(agent: Agent, case: dict[str, Any]) -> dict[str, Any]:
    """Pipelined requests over the in-memory transport, same accounting as the generator."""
    depth = int(case["depth"])
    cap = int(case["max_requests"])
    warmup, duration = float(case["warmup"]), float(case["duration"])
    buffer, offsets = encode_requests(case["command"], case.get("body"), cap)
    view = memoryview(buffer)
    stream = await agent.connect()
    await stream.send_all(encode_request("handshake", 1, {"Version": 1}))
    hello = ReplyCounter(False)
    while not hello.feed(await stream.receive_some(READ_SIZE)):
        pass
    counter = ReplyCounter(bool(case["reply_body"]))
    state = {"replies": 0, "sent": 0, "cap": cap}
    credit = trio.Event()
    marks: dict[str, tuple[float, int]] = {}

    async def sender() -> None:
        nonlocal credit
        while state["sent"] < state["cap"]:
            target = min(state["cap"], state["replies"] + depth)
            if state["sent"] < target:
                await stream.send_all(view[offsets[state["sent"]] : offsets[target]])
                state["sent"] = target
            else:
                await credit.wait()
                credit = trio.Event()

    async def receiver() -> None:
        start = time.perf_counter()
        warm_end, window_end = start + warmup, start + warmup + duration
        marks["start"] = (start, 0)
        while state["replies"] < state["cap"]:
            data = await stream.receive_some(READ_SIZE)
            if not data:
                raise ConnectionError("the engine closed the in-memory stream")
            got = counter.feed(data)
            if got:
                state["replies"] += got
                credit.set()
            now = time.perf_counter()
            if "a" not in marks and now >= warm_end:
                marks["a"] = (now, state["replies"])
            if "b" not in marks and now >= window_end:
                marks["b"] = (now, state["replies"])
                state["cap"] = state["sent"]  # stop issuing; drain what is in flight
                credit.set()
        marks["end"] = (time.perf_counter(), state["replies"])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        nursery.start_soon(receiver)
    await stream.aclose()
    capped = "b" not in marks
    mark_a = marks.get("a", marks["start"])
    mark_b = marks.get("b", marks["end"])
    counted, elapsed = mark_b[1] - mark_a[1], mark_b[0] - mark_a[0]
    return {
        "rate": counted / elapsed if elapsed > 0 else 0.0,
        "replies": state["replies"],
        "counted": counted,
        "elapsed": elapsed,
        "errors": counter.errors,
        "first_error": counter.first_error,
        "capped": capped,
    }


async def engine(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    agent = make_agent("memory://bench-engine", quiet=True)
    results = []
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        for case in cases:
            with trio.fail_after(float(case["duration"]) + float(case["warmup"]) + 60):
                results.append({**case, **(await engine_case(agent, case))})
        agent.shutdown()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inproc")
    commands = parser.add_subparsers(dest="what", required=True)
    source = commands.add_parser("monitor-server")
    source.add_argument("--port", type=int, required=True)
    source.add_argument("--lines", type=int, default=200_000)
    source.add_argument("--batch", type=int, default=128)
    source.add_argument("--wait", type=float, default=60.0)
    ceiling = commands.add_parser("engine")
    ceiling.add_argument("--spec", required=True, help="JSON list of cases")
    args = parser.parse_args(argv)
    if args.what == "monitor-server":
        result: Any = trio.run(monitor_server, args.port, args.lines, args.batch, args.wait)
    else:
        result = trio.run(engine, json.loads(args.spec))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
