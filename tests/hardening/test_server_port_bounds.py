"""Hostile peers on the server port, over real TCP on 127.0.0.1: replies never echo more than a
bounded part of what the peer sent, what the port queues to send is bounded in bytes (per
stream, per yamux session, and agent-wide), and every log line a peer can trigger goes through
the per-kind throttle. A well-behaved client on the same port is answered meanwhile.

Bytes are measured with the budgets' own counters (``used``/``peak``), not RSS. The throttle's
clock is frozen (or stepped by hand) in the log tests, so that "one line per kind per second"
is checked exactly, whatever the machine's speed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgpack
import pytest
import trio
from serverport.sp_helpers import (
    DATA,
    SYN,
    WINDOW_UPDATE,
    LogCapture,
    RunningPort,
    data_frame,
    frame,
    make_tls_files,
    read_exactly,
    read_to_eof,
    request_bytes,
    running_port,
    tcp,
)

from agentrpc.budget import DEFAULT_AGENT_BYTES, DEFAULT_CONNECTION_BYTES, SharedBudget
from agentrpc.logs import PEER_TEXT_LIMIT
from agentrpc.serverport.endpoints import Endpoints, call_on_stream
from agentrpc.serverport.router import RouterLimits
from agentrpc.serverport.server import ServerPort
from agentrpc.serverport.tls import TLSConfig
from agentrpc.serverport.yamux_session import SEND_CHUNK, YamuxConfig

ENTRY = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[", re.MULTILINE)
BIG_REPLY = 256 * 1024


class WatchedBudget(SharedBudget):
    """A shared budget that says when a producer first had to wait for it."""

    def __init__(self, limit: int) -> None:
        self.waited = trio.Event()
        self._watched_waits = 0
        super().__init__(limit)

    @property  # type: ignore[override]
    def waits(self) -> int:
        return self._watched_waits

    @waits.setter
    def waits(self, value: int) -> None:
        self._watched_waits = value
        if value:
            self.waited.set()


def frozen_throttle(log: LogCapture) -> list[float]:
    """Replace the throttle's clock by a hand-driven one; returns it (a one-item list)."""
    clock = [1000.0]
    log.hub._monotonic = lambda: clock[0]
    return clock


def entries(text: str) -> int:
    """Log lines (a multi-line entry, a traceback say, counts once)."""
    return len(ENTRY.findall(text))


def big_endpoints() -> Endpoints:
    endpoints = Endpoints()
    endpoints.register("Test.Big", lambda _body: "b" * BIG_REPLY)
    return endpoints


async def ping_answered(running: RunningPort) -> None:
    """A good client on a fresh connection gets its answer."""
    good = await tcp(running.address)
    try:
        await good.send_all(b"\x00")
        with trio.fail_after(5):
            assert await call_on_stream(good, "Status.Ping", {}, seq=1) == {}
    finally:
        await good.aclose()


# ---------------------------------------------------------------------- a huge ServiceMethod


def huge_request(length: int = 900_000) -> bytes:
    header = msgpack.packb({"Seq": 1, "ServiceMethod": "A" * length}, use_bin_type=True)
    return b"\x00" + header + b"\x80"


async def test_a_900kb_service_method_gets_a_short_reply_and_one_log_line_a_second() -> None:
    log = LogCapture()
    clock = frozen_throttle(log)
    async with running_port(log=log) as running:
        replies = []
        for round_ in range(2):
            for _ in range(10):
                stream = await tcp(running.address)
                await stream.send_all(huge_request())
                replies.append(await read_to_eof(stream))
                await stream.aclose()
            if round_ == 0:
                clock[0] += 1.5
        for reply in replies:
            assert len(reply) < 1024
            unpacker = msgpack.Unpacker(raw=False)
            unpacker.feed(reply)
            header, body = list(unpacker)
            assert header["Error"] == (
                "rpc: service/method request ill-formed: "
                + "A" * PEER_TEXT_LIMIT
                + "...(900000 characters)"
            )
            assert len(header["ServiceMethod"]) < PEER_TEXT_LIMIT + 30
            assert body == {}
        lines = [line for line in log.text.splitlines() if "ill-formed" in line]
        assert len(lines) == 2  # twenty connections, two seconds
        assert lines[1].endswith("(9 similar lines held back)")
        assert all(len(line) < 600 for line in log.text.splitlines())
        await ping_answered(running)


async def test_an_unknown_service_with_a_dot_is_cut_the_same_way() -> None:
    async with running_port() as running:
        stream = await tcp(running.address)
        header = msgpack.packb({"Seq": 7, "ServiceMethod": "S" * 5000 + ".M"})
        await stream.send_all(b"\x00" + header + b"\x80")
        reply = await read_to_eof(stream)
        assert len(reply) < 1024
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(reply)
        response = next(unpacker)
        assert response["Seq"] == 7
        assert response["Error"].startswith("rpc: can't find service SSSS")
        assert response["Error"].endswith("...(5002 characters)")


# ---------------------------------------------------------------------- bytes held to send


async def test_byte0_clients_that_pipeline_and_never_read_hold_at_most_the_budget() -> None:
    budget = WatchedBudget(600 * 1024)
    async with running_port(big_endpoints(), send_budget=budget) as running:
        assert running.port.send_budget is budget
        pipelined = b"".join(request_bytes("Test.Big", seq) for seq in range(1, 101))
        stalled = []
        for _ in range(4):
            stream = await tcp(running.address)
            await stream.send_all(b"\x00" + pipelined)  # 100 replies of 256 KiB, never read
            stalled.append(stream)
        with trio.fail_after(10):
            await budget.waited.wait()  # the kernel buffers are full: the server had to wait
        reply_size = BIG_REPLY + 64
        assert budget.used >= reply_size  # stalled replies are really held and counted...
        assert budget.peak <= budget.limit  # ...never more than the agent-wide budget
        # One reply at a time per stream: the rest of each pipeline was not even decoded.
        assert running.port.rpc.stats.requests < 4 * 100
        await ping_answered(running)
        assert budget.peak <= budget.limit + budget.reserve
        for stream in stalled:
            await stream.aclose()


def mux_opening(stream_ids: range, request: bytes) -> bytes:
    """A yamux client that opens streams, each with one request, and will never read."""
    return b"\x04" + b"".join(
        frame(WINDOW_UPDATE, SYN, sid, 0) + data_frame(sid, request) for sid in stream_ids
    )


async def test_many_yamux_streams_that_never_read_stay_within_the_shared_budget() -> None:
    budget = WatchedBudget(600 * 1024)
    yamux = YamuxConfig(keepalive_interval=None)
    limits = RouterLimits(yamux=yamux)
    async with running_port(big_endpoints(), limits=limits, send_budget=budget) as running:
        sessions = []
        for _ in range(2):
            stream = await tcp(running.address)
            await stream.send_all(mux_opening(range(1, 129, 2), request_bytes("Test.Big", 1)))
            sessions.append(stream)
        with trio.fail_after(10):
            await budget.waited.wait()
        # Every stream's reply and every session's queue draw on the one budget: past it only
        # an empty session's single chunk may go.
        assert budget.used > 0
        assert budget.peak <= budget.limit + SEND_CHUNK
        mux_sessions = running.port.router._sessions
        assert len(mux_sessions) == 2
        assert any(session.send_budget.used for session in mux_sessions)  # held, and counted
        for session in mux_sessions:
            assert session.send_budget.used <= yamux.max_buffered_output + SEND_CHUNK
        await ping_answered(running)
        assert budget.peak <= budget.limit + SEND_CHUNK + budget.reserve
        for stream in sessions:
            await stream.aclose()


def test_the_budget_api_the_agent_uses() -> None:
    log = LogCapture()
    port = ServerPort("127.0.0.1:0", Endpoints(), None, log.logger())
    assert isinstance(port.send_budget, SharedBudget)
    assert port.send_budget.limit == DEFAULT_AGENT_BYTES
    assert port.rpc.send_queue_bytes == DEFAULT_CONNECTION_BYTES
    shared = SharedBudget(1 << 20)
    limits = RouterLimits(send_queue_bytes=12345)
    port = ServerPort("127.0.0.1:0", Endpoints(), None, log.logger(), limits, send_budget=shared)
    assert port.send_budget is shared
    assert port.rpc.send_budget is shared
    assert port.router.send_budget is shared
    assert port.rpc.send_queue_bytes == 12345
    port.set_send_queue_bytes(4096)
    assert port.rpc.send_queue_bytes == 4096
    with pytest.raises(ValueError):
        port.set_send_queue_bytes(0)


# ---------------------------------------------------------------------- a flood per kind

Attack = Callable[[RunningPort], Awaitable[None]]


def sends(data: bytes) -> Attack:
    async def attack(running: RunningPort) -> None:
        stream = await tcp(running.address)
        with contextlib.suppress(trio.BrokenResourceError):  # closed before all was read
            await stream.send_all(data)
        await read_to_eof(stream)
        await stream.aclose()

    return attack


async def silent(running: RunningPort) -> None:
    stream = await tcp(running.address)
    await read_to_eof(stream)  # closed by the first-byte deadline
    await stream.aclose()


async def malformed_mux_stream(running: RunningPort) -> None:
    stream = await tcp(running.address)
    await stream.send_all(b"\x04" + frame(WINDOW_UPDATE, SYN, 1, 0) + data_frame(1, b"\x00\xc1"))
    await read_exactly(stream, 24)  # the stream's ACK, then its FIN once the server gave up
    await stream.aclose()


async def window_overrun(running: RunningPort) -> None:
    await sends(b"\x04" + frame(WINDOW_UPDATE, SYN, 1, 0) + frame(DATA, 0, 1, 300_000))(running)


BAD_TLS = b"\x03" + b"\x16\x03\x01\x00\x10" + b"\x00" * 16

KINDS: dict[str, tuple[Attack, str, str]] = {
    # kind: (one connection's attack, a fragment its line carries, TLS set-up)
    "unknown-first-byte": (sends(b"\x09hello"), "unrecognized RPC byte", "none"),
    "gossip-without-handler": (sends(b"\x06hello"), "unrecognized RPC byte", "none"),
    "malformed-msgpack": (sends(b"\x00\xc1\xc1"), "malformed request", "none"),
    "wrong-header-type": (sends(b"\x00" + msgpack.packb("x") + b"\x80"), "malformed", "none"),
    "unknown-method": (sends(b"\x00" + request_bytes("No.Such", 1)), "can't find", "none"),
    "huge-unknown-method": (sends(huge_request(300_000)), "ill-formed", "none"),
    "yamux-bad-version": (sends(b"\x04" + b"\x07" * 12), "yamux session", "none"),
    "yamux-bad-type": (sends(b"\x04" + bytes([0, 9]) + b"\x00" * 10), "yamux session", "none"),
    "yamux-window-overrun": (window_overrun, "receive window exceeded", "none"),
    "malformed-mux-stream": (malformed_mux_stream, "malformed request", "none"),
    "tls-not-configured": (sends(BAD_TLS), "TLS is not configured", "none"),
    "bad-tls-handshake": (sends(BAD_TLS), "TLS handshake with", "tls"),
    "plain-when-tls-required": (
        sends(b"\x00" + request_bytes("Status.Ping", 1)),
        "Non-TLS",
        "verify",
    ),
    "first-byte-timeout": (silent, "no type byte in time", "none"),
}


def tls_for(setup: str, directory: Path) -> TLSConfig | None:
    if setup == "none":
        return None
    return make_tls_files(directory).server(verify_incoming=setup == "verify")


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_a_flood_of_one_kind_logs_at_most_a_couple_of_lines(
    kind: str, tmp_path: Path
) -> None:
    attack, fragment, setup = KINDS[kind]
    log = LogCapture()
    frozen_throttle(log)
    limits = RouterLimits(first_byte_timeout=0.2)
    async with running_port(log=log, tls=tls_for(setup, tmp_path), limits=limits) as running:
        before = entries(log.text)
        async with trio.open_nursery() as nursery:
            for _ in range(30):
                nursery.start_soon(attack, running)
        flood = log.text
        assert fragment in flood  # the path really was taken...
        assert entries(flood) - before <= 3  # ...and thirty connections gave a couple of lines
        if setup == "none":
            await ping_answered(running)


async def test_a_connection_flood_past_the_per_ip_cap_logs_once() -> None:
    log = LogCapture()
    frozen_throttle(log)
    limits = RouterLimits(max_conns_per_client=1)
    async with running_port(log=log, limits=limits) as running:
        holder = await tcp(running.address)
        await holder.send_all(b"\x00")
        assert await call_on_stream(holder, "Status.Ping", {}, seq=1) == {}
        before = entries(log.text)
        for _ in range(30):
            extra = await tcp(running.address)
            assert await read_to_eof(extra) == b""
            await extra.aclose()
        assert running.port.router.stats.rejected_conn_limit == 30
        assert entries(log.text) - before == 1
        # The connection that holds the slot is still served.
        assert await call_on_stream(holder, "Status.Ping", {}, seq=2) == {}
        await holder.aclose()
