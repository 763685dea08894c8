"""The first-byte router over real TCP on 127.0.0.1 (OS-assigned ports): every row of the
byte table, the first-byte deadline, the per-IP cap, isolation of failures, in-process calls,
and a reference-shaped yamux client (hand-built frames) calling our server."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from sp_helpers import (
    ACK,
    DATA,
    FIN,
    PING,
    SYN,
    WINDOW_UPDATE,
    LogCapture,
    data_frame,
    frame,
    local_name,
    read_exactly,
    read_to_eof,
    request_bytes,
    response_bytes,
    running_port,
    tcp,
)

from agentrpc.serverport.endpoints import EndpointError, Endpoints, RemoteError, call_on_stream
from agentrpc.serverport.router import RouterLimits
from agentrpc.serverport.rpc_codec import RPCType
from agentrpc.serverport.server import ServerPort
from agentrpc.serverport.yamux_session import YamuxConfig, YamuxSession

PING_REQUEST = request_bytes("Status.Ping", 1)
PING_RESPONSE = response_bytes("Status.Ping", 1)


async def test_byte_0_rpc_ping_exact_bytes() -> None:
    async with running_port() as running:
        stream = await tcp(running.address)
        await stream.send_all(b"\x00" + PING_REQUEST)
        assert await read_exactly(stream, len(PING_RESPONSE)) == PING_RESPONSE
        # Served until EOF: a second request on the same connection.
        await stream.send_all(request_bytes("Status.Ping", 2))
        assert await read_exactly(stream, len(PING_RESPONSE)) == response_bytes("Status.Ping", 2)
        await stream.send_eof()
        assert await read_to_eof(stream) == b""


async def test_byte_0_unknown_service_error_empty_body_then_close() -> None:
    async with running_port() as running:
        stream = await tcp(running.address)
        await stream.send_all(b"\x00" + request_bytes("Foo.Bar", 9, body=b"\x81\xa1a\x01"))
        expected = response_bytes("Foo.Bar", 9, "rpc: can't find service Foo.Bar", body=b"\x80")
        assert await read_to_eof(stream) == expected


@pytest.mark.parametrize("value", [1, 2, 5, 8, 9, 0x16, 255])
async def test_unrecognized_bytes_are_logged_and_closed(value: int) -> None:
    async with running_port() as running:
        stream = await tcp(running.address)
        await stream.send_all(bytes([value]) + b"more bytes")
        assert await read_to_eof(stream) == b""
        line = f"unrecognized RPC byte: byte={value} conn=from={local_name(stream)}"
        assert line in running.log.text


async def test_byte_6_goes_to_the_registered_gossip_handler() -> None:
    received: list[tuple[bytes, str]] = []

    async def gossip(stream: trio.abc.Stream, peer: str) -> None:
        data = await stream.receive_some()
        received.append((bytes(data), peer))
        await stream.send_all(b"gossip-ack")

    async with running_port() as running:
        # Without a handler: unrecognized, as the reference without its enterprise handler.
        plain = await tcp(running.address)
        await plain.send_all(b"\x06hello")
        assert await read_to_eof(plain) == b""
        assert f"unrecognized RPC byte: byte=6 conn=from={local_name(plain)}" in running.log.text
        running.port.set_gossip_handler(gossip)
        stream = await tcp(running.address)
        await stream.send_all(b"\x06push-pull")
        assert await read_to_eof(stream) == b"gossip-ack"
        assert received == [(b"push-pull", local_name(stream))]


async def test_byte_4_reference_shaped_client_exact_frames() -> None:
    """What Consul's pool and hashicorp/yamux send, byte by byte, and what we must answer."""
    async with running_port() as running:
        stream = await tcp(running.address)
        # Open stream 1 (SYN window update, delta 0), then the request in one data frame.
        await stream.send_all(
            b"\x04" + frame(WINDOW_UPDATE, SYN, 1, 0) + data_frame(1, PING_REQUEST)
        )
        expected = frame(WINDOW_UPDATE, ACK, 1, 0) + data_frame(1, PING_RESPONSE)
        assert await read_exactly(stream, len(expected)) == expected
        # The reference pool reuses the stream for its next call: Seq 2 on stream 1.
        await stream.send_all(data_frame(1, request_bytes("Status.Ping", 2)))
        expected = data_frame(1, response_bytes("Status.Ping", 2))
        assert await read_exactly(stream, len(expected)) == expected
        # A keep-alive ping is echoed with ACK.
        await stream.send_all(frame(PING, SYN, 0, 42))
        assert await read_exactly(stream, 12) == frame(PING, ACK, 0, 42)
        # Closing the stream (FIN) makes the server finish and close its side too.
        await stream.send_all(frame(WINDOW_UPDATE, FIN, 1, 0))
        assert await read_exactly(stream, 12) == frame(WINDOW_UPDATE, FIN, 1, 0)
        # A second stream with an unknown method: error, empty body, FIN.
        await stream.send_all(
            frame(DATA, SYN, 3, len(request_bytes("X.Y", 3))) + request_bytes("X.Y", 3)
        )
        error = response_bytes("X.Y", 3, "rpc: can't find service X.Y")
        expected = frame(WINDOW_UPDATE, ACK, 3, 0) + data_frame(3, error)
        assert await read_exactly(stream, len(expected)) == expected
        assert await read_exactly(stream, 12) == frame(WINDOW_UPDATE, FIN, 3, 0)


async def test_byte_4_streams_starting_with_6_are_gossip() -> None:
    got: list[bytes] = []

    async def gossip(stream: trio.abc.Stream, _peer: str) -> None:
        got.append(bytes(await stream.receive_some()))
        await stream.send_all(b"ok")

    async with running_port(gossip=gossip) as running:
        transport = await tcp(running.address)
        await transport.send_all(bytes([RPCType.MULTIPLEX_V2]))
        session = YamuxSession(transport, client=True, config=YamuxConfig(keepalive_interval=None))
        async with trio.open_nursery() as nursery:
            await nursery.start(session.run)
            gossip_stream = await session.open_stream()
            await gossip_stream.send_all(b"\x06stream-data")
            assert await read_to_eof(gossip_stream) == b"ok"
            rpc_stream = await session.open_stream()
            assert await call_on_stream(rpc_stream, "Status.Ping", {}, seq=5) == {}
            session.close()
    assert got == [b"stream-data"]


async def test_first_byte_deadline() -> None:
    async with running_port(limits=RouterLimits(first_byte_timeout=0.2)) as running:
        silent = await tcp(running.address)
        start = trio.current_time()
        assert await read_to_eof(silent) == b""
        assert 0.15 <= trio.current_time() - start < 3
        assert "no type byte in time" in running.log.text
        assert running.port.router.stats.first_byte_timeouts == 1
        # After the byte arrives, the deadline no longer applies (an idle RPC connection).
        idle = await tcp(running.address)
        await idle.send_all(b"\x00")
        with trio.move_on_after(0.4):
            await idle.receive_some()
            pytest.fail("an RPC connection that sent its byte must stay open")
        await idle.send_all(PING_REQUEST)
        assert await read_exactly(idle, len(PING_RESPONSE)) == PING_RESPONSE


async def _open_counted(address: Any) -> trio.SocketStream:
    """A byte-0 connection the server has certainly accepted and counted (a ping answered)."""
    stream = await tcp(address)
    await stream.send_all(b"\x00" + PING_REQUEST)
    assert await read_exactly(stream, len(PING_RESPONSE)) == PING_RESPONSE
    return stream


async def test_per_ip_cap_and_changing_it_at_run_time() -> None:
    async with running_port(limits=RouterLimits(max_conns_per_client=2)) as running:
        router = running.port.router
        first = await _open_counted(running.address)
        second = await _open_counted(running.address)
        assert router.connections_from("127.0.0.1") == 2
        extra = await tcp(running.address)
        await extra.send_all(b"\x00" + PING_REQUEST)
        assert await read_to_eof(extra) == b""  # closed without a message
        assert "rpc_max_conns_per_client exceeded" in running.log.text
        # A reload raises the cap: a new connection is served.
        running.port.set_max_conns_per_client(3)
        third = await _open_counted(running.address)
        # Lowering it keeps existing connections and refuses new ones.
        running.port.set_max_conns_per_client(1)
        refused = await tcp(running.address)
        assert await read_to_eof(refused) == b""
        await first.send_all(request_bytes("Status.Ping", 3))
        assert await read_exactly(first, len(PING_RESPONSE)) == response_bytes("Status.Ping", 3)
        # Closing connections frees their slots; 0 means no limit.
        for stream in (first, second, third):
            await stream.aclose()
        running.port.set_max_conns_per_client(0)
        many = [await _open_counted(running.address) for _ in range(4)]
        assert router.stats.rejected_conn_limit == 2
        with pytest.raises(ValueError):
            running.port.set_max_conns_per_client(-1)
        for stream in many:
            await stream.aclose()


async def test_one_failing_connection_never_takes_the_server_down() -> None:
    async def broken_gossip(_stream: trio.abc.Stream, _peer: str) -> None:
        raise RuntimeError("bug in a handler")

    endpoints = Endpoints()

    def crash(_body: Any) -> Any:
        raise KeyError("endpoint bug")

    endpoints.register("Test.Crash", crash)
    async with running_port(endpoints, gossip=broken_gossip) as running:
        for _ in range(3):
            stream = await tcp(running.address)
            await stream.send_all(b"\x06boom")
            assert await read_to_eof(stream) == b""
        garbage = await tcp(running.address)
        await garbage.send_all(b"\x04" + b"\x07" * 12)  # a yamux header with version 7
        assert await read_to_eof(garbage) == frame(3, 0, 0, 1)  # go-away: protocol error
        rpc = await tcp(running.address)
        await rpc.send_all(b"\x00")
        with pytest.raises(RemoteError, match="internal error"):
            await call_on_stream(rpc, "Test.Crash", {}, seq=1)
        assert await call_on_stream(rpc, "Status.Ping", {}, seq=2) == {}
        # Logged loudly, but through the per-kind throttle: one line for the three.
        assert running.log.text.count("RuntimeError: bug in a handler") == 1
        assert "KeyError" in running.log.text


async def test_in_process_calls_use_the_same_router() -> None:
    endpoints = Endpoints()
    seen: list[Any] = []

    async def record(body: Any) -> Any:
        seen.append(body)
        if body == "refuse":
            raise EndpointError("refused")
        return {"echo": body}

    endpoints.register("Test.Record", record)
    async with running_port(endpoints) as running:
        connections_before = running.port.router.stats.connections
        assert await running.port.call_local("Status.Ping", {}) == {}
        assert await running.port.call_local("Test.Record", [1, b"\x00"]) == {"echo": [1, b"\x00"]}
        with pytest.raises(RemoteError) as refused:
            await running.port.call_local("Test.Record", "refuse")
        assert refused.value.error == "refused"
        with pytest.raises(RemoteError, match=r"can't find service Nope\.Nope"):
            await running.port.call_local("Nope.Nope", {})
        assert seen == [[1, b"\x00"], "refuse"]
        assert running.port.rpc.stats.requests == 4
        assert running.port.router.stats.connections == connections_before


async def test_shutdown_closes_mux_sessions_with_go_away() -> None:
    async with running_port() as running:
        transport = await tcp(running.address)
        await transport.send_all(b"\x04" + frame(WINDOW_UPDATE, SYN, 1, 0))
        assert await read_exactly(transport, 12) == frame(WINDOW_UPDATE, ACK, 1, 0)
        running.port.shutdown()
        # The session says go-away (normal) before the connection closes.
        assert await read_to_eof(transport) == frame(3, 0, 0, 0)


async def test_cancelling_the_server_port_closes_everything() -> None:
    log = LogCapture()
    port = ServerPort("127.0.0.1:0", Endpoints(), None, log.logger())
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(port.run)
            stream = await _open_counted(address)
            mux = await tcp(address)
            await mux.send_all(b"\x04" + frame(WINDOW_UPDATE, SYN, 1, 0))
            assert await read_exactly(mux, 12) == frame(WINDOW_UPDATE, ACK, 1, 0)
            scope.cancel()
    assert scope.cancelled_caught
    assert await read_to_eof(stream) == b""
    assert await read_to_eof(mux) == b""
    with pytest.raises(OSError):
        await tcp(address)
