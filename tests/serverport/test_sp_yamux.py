"""yamux: the frame codec and session state machine (sans-I/O, hypothesis), and the trio
engine over memory streams with the autojump clock (no sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings, strategies as st
from sp_helpers import ACK, DATA, FIN, GO_AWAY, PING, RST, SYN, WINDOW_UPDATE, frame

from agentrpc.serverport.yamux import (
    INITIAL_WINDOW,
    FrameType,
    GoAwayReceived,
    Header,
    PingAnswered,
    RemoteGoAwayError,
    RemoteNotAcceptingError,
    SessionShutdownError,
    StreamChanged,
    StreamClosedError,
    StreamOpened,
    StreamState,
    YamuxConnection,
    YamuxProtocolError,
    decode_header,
    encode_header,
)
from agentrpc.serverport.yamux_session import YamuxConfig, YamuxSession, YamuxStream
from agentrpc.transports import memory_stream_pair

# ----------------------------------------------------------------------------- frame codec


@given(
    frame_type=st.integers(0, 3),
    flags=st.integers(0, 0xFFFF),
    stream_id=st.integers(0, 2**32 - 1),
    length=st.integers(0, 2**32 - 1),
)
def test_header_round_trip(frame_type: int, flags: int, stream_id: int, length: int) -> None:
    raw = encode_header(frame_type, flags, stream_id, length)
    assert raw == frame(frame_type, flags, stream_id, length)
    assert len(raw) == 12
    assert decode_header(raw) == Header(frame_type, flags, stream_id, length)


def test_header_rejects_bad_version_and_type() -> None:
    with pytest.raises(YamuxProtocolError, match="version"):
        decode_header(b"\x01" + bytes(11))
    with pytest.raises(YamuxProtocolError, match="type"):
        decode_header(b"\x00\x04" + bytes(10))


# ----------------------------------------------------------------------------- state machine


def _pair() -> tuple[YamuxConnection, YamuxConnection]:
    return YamuxConnection(client=True), YamuxConnection(client=False)


def _pump(source: YamuxConnection, sink: YamuxConnection) -> list[Any]:
    return sink.receive_data(source.data_to_send())


def test_open_accept_data_close_frames_match_the_reference() -> None:
    client, server = _pair()
    stream = client.open_stream()
    # Go's OpenStream: a window update with SYN and delta 0, stream id 1 (odd: the dialer).
    assert client.data_to_send() == frame(WINDOW_UPDATE, SYN, 1, 0)
    assert client.send_data(stream, b"hello") == 5
    assert client.data_to_send() == frame(DATA, 0, 1, 5) + b"hello"
    events = server.receive_data(frame(WINDOW_UPDATE, SYN, 1, 0) + frame(DATA, 0, 1, 5) + b"hello")
    assert events == [StreamOpened(1), StreamChanged(1)]
    accepted = server.accept_stream()
    assert accepted is not None
    # Go's AcceptStream: a window update with ACK and delta 0.
    assert server.data_to_send() == frame(WINDOW_UPDATE, ACK, 1, 0)
    assert server.read(accepted, 100) == b"hello"
    assert server.send_data(accepted, b"hi") == 2
    server.close_stream(accepted)
    assert server.data_to_send() == frame(DATA, 0, 1, 2) + b"hi" + frame(WINDOW_UPDATE, FIN, 1, 0)
    client.receive_data(frame(WINDOW_UPDATE, ACK, 1, 0) + frame(DATA, 0, 1, 2) + b"hi")
    client.receive_data(frame(WINDOW_UPDATE, FIN, 1, 0))
    assert stream.remote_closed and not stream.local_closed
    assert client.read(stream, 10) == b"hi"
    client.close_stream(stream)
    assert client.data_to_send() == frame(WINDOW_UPDATE, FIN, 1, 0)
    assert stream.state is StreamState.CLOSED
    assert client.streams == {}
    assert client.outbound_unacked == 0


def test_server_streams_are_even_and_first_frame_carries_ack() -> None:
    client, server = _pair()
    out = server.open_stream()
    assert out.stream_id == 2
    assert server.open_stream().stream_id == 4
    _pump(server, client)
    incoming = client.accept_stream()
    assert incoming is not None and incoming.stream_id == 2
    assert client.data_to_send() == frame(WINDOW_UPDATE, ACK, 2, 0)


def test_window_update_after_half_the_window_is_read() -> None:
    client, server = _pair()
    stream = client.open_stream()
    _pump(client, server)
    accepted = server.accept_stream()
    assert accepted is not None
    server.data_to_send()
    payload = bytes(INITIAL_WINDOW)
    assert client.send_data(stream, payload + b"more") == INITIAL_WINDOW  # never past the window
    assert stream.send_window == 0
    assert client.send_data(stream, b"more") == 0
    _pump(client, server)
    assert accepted.recv_window == 0
    assert server.read(accepted, INITIAL_WINDOW // 2 - 1) == bytes(INITIAL_WINDOW // 2 - 1)
    assert server.data_to_send() == b""  # less than half consumed: no update yet (reference)
    server.read(accepted, 1)
    assert server.data_to_send() == frame(WINDOW_UPDATE, 0, 1, INITIAL_WINDOW // 2)
    client.receive_data(frame(WINDOW_UPDATE, 0, 1, INITIAL_WINDOW // 2))
    assert stream.send_window == INITIAL_WINDOW // 2


def test_accept_during_a_partly_received_frame_does_not_over_credit_the_window() -> None:
    # Found by the property test below: the frame's header has taken its length off the
    # window, its payload has not arrived yet; the ACK must not give that length back.
    client, server = _pair()
    stream = server.open_stream()
    assert server.send_data(stream, b"x") == 1
    wire = server.data_to_send()
    client.receive_data(wire[:24])  # the SYN and the data header, not the payload
    accepted = client.accept_stream()
    assert accepted is not None
    assert client.data_to_send() == frame(WINDOW_UPDATE, ACK, 2, 0)
    client.receive_data(wire[24:])
    assert accepted.recv_window + len(accepted.buffer) == INITIAL_WINDOW


def test_receive_window_exceeded_is_a_protocol_error() -> None:
    server = YamuxConnection(client=False)
    wire = frame(WINDOW_UPDATE, SYN, 1, 0) + frame(DATA, 0, 1, INITIAL_WINDOW + 1)
    with pytest.raises(YamuxProtocolError, match="window exceeded"):
        server.receive_data(wire)
    assert server.data_to_send() == frame(GO_AWAY, 0, 0, 1)
    assert server.terminated is not None
    with pytest.raises(SessionShutdownError):
        server.open_stream()


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (frame(WINDOW_UPDATE, SYN, 2, 0), "parity"),
        (frame(WINDOW_UPDATE, SYN, 1, 0) * 2, "duplicate"),
        (frame(WINDOW_UPDATE, SYN, 1, 0) + frame(WINDOW_UPDATE, FIN, 1, 0) * 2, "unexpected FIN"),
        (b"\x01" + bytes(11), "version"),
    ],
)
def test_protocol_errors_send_go_away(wire: bytes, match: str) -> None:
    server = YamuxConnection(client=False)
    with pytest.raises(YamuxProtocolError, match=match):
        server.receive_data(wire)
    assert server.data_to_send().endswith(frame(GO_AWAY, 0, 0, 1))


def test_ping_is_answered_with_ack_and_same_value() -> None:
    client, server = _pair()
    assert server.receive_data(frame(PING, SYN, 0, 0xDEADBEEF)) == []
    assert server.data_to_send() == frame(PING, ACK, 0, 0xDEADBEEF)
    assert client.ping() == 0
    assert client.ping() == 1
    assert client.data_to_send() == frame(PING, SYN, 0, 0) + frame(PING, SYN, 0, 1)
    assert client.receive_data(frame(PING, ACK, 0, 1)) == [PingAnswered(1)]


def test_go_away_normal_and_error_codes() -> None:
    client, server = _pair()
    assert client.receive_data(frame(GO_AWAY, 0, 0, 0)) == [GoAwayReceived(0)]
    with pytest.raises(RemoteNotAcceptingError):
        client.open_stream()
    with pytest.raises(RemoteGoAwayError, match="internal error"):
        server.receive_data(frame(GO_AWAY, 0, 0, 2))
    # After a local go-away, new streams are refused with RST.
    other = YamuxConnection(client=False)
    other.go_away()
    assert other.data_to_send() == frame(GO_AWAY, 0, 0, 0)
    assert other.receive_data(frame(WINDOW_UPDATE, SYN, 1, 0) + frame(DATA, 0, 1, 3) + b"abc") == []
    assert other.data_to_send() == frame(WINDOW_UPDATE, RST, 1, 0)


def test_backlog_overflow_resets_and_data_for_unknown_streams_is_drained() -> None:
    server = YamuxConnection(client=False, accept_backlog=2)
    wire = b"".join(frame(WINDOW_UPDATE, SYN, sid, 0) for sid in (1, 3, 5))
    assert server.receive_data(wire + frame(DATA, 0, 5, 4) + b"lost") == [
        StreamOpened(1),
        StreamOpened(3),
        StreamChanged(1),
        StreamChanged(3),
    ]
    assert server.data_to_send() == frame(WINDOW_UPDATE, RST, 5, 0)
    assert server.pending_accepts == 2
    # The stream after the drained payload is parsed correctly.
    assert server.receive_data(frame(DATA, 0, 1, 2) + b"ok") == [StreamChanged(1)]


def test_reset_and_writes_after_close() -> None:
    client, server = _pair()
    stream = client.open_stream()
    client.close_stream(stream)
    with pytest.raises(StreamClosedError):
        client.send_data(stream, b"x")
    _pump(client, server)
    accepted = server.accept_stream()
    assert accepted is not None and accepted.remote_closed
    server.reset_stream(accepted)
    assert server.data_to_send().endswith(frame(WINDOW_UPDATE, RST, 1, 0))
    client.receive_data(frame(WINDOW_UPDATE, RST, 1, 0))
    assert stream.is_reset
    assert client.streams == {}


_ops = st.lists(
    st.tuples(
        st.sampled_from(["open", "send", "read", "close", "deliver", "deliver_part", "abandon"]),
        st.booleans(),  # which side
        st.integers(0, 7),  # which stream
        st.integers(1, 300_000),  # how many bytes
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=_ops)
def test_windows_never_go_negative_and_data_arrives_in_order(
    ops: list[tuple[str, bool, int, int]],
) -> None:
    sides = {True: YamuxConnection(client=True), False: YamuxConnection(client=False)}
    pending = {True: b"", False: b""}  # bytes in flight from that side
    sent: dict[tuple[bool, int], bytearray] = {}
    got: dict[tuple[bool, int], bytearray] = {}
    streams: dict[bool, list[Any]] = {True: [], False: []}
    abandoned: set[tuple[bool, int]] = set()
    counter = 0

    def flush(side: bool, part: int | None = None) -> None:
        pending[side] += sides[side].data_to_send()
        chunk = pending[side] if part is None else pending[side][:part]
        pending[side] = pending[side][len(chunk) :]
        sides[not side].receive_data(chunk)
        while (accepted := sides[not side].accept_stream()) is not None:
            streams[not side].append(accepted)

    for op, side, index, size in ops:
        conn = sides[side]
        mine = streams[side]
        if op == "open":
            if len(mine) < 8:
                mine.append(conn.open_stream())
            continue
        if op == "deliver":
            flush(side)
            continue
        if op == "deliver_part":
            flush(side, size % 5000)
            continue
        if not mine:
            continue
        stream = mine[index % len(mine)]
        key = (side, stream.stream_id)
        if op == "send" and not stream.local_closed:
            payload = bytes([counter % 251]) * size
            counter += 1
            count = conn.send_data(stream, payload)
            sent.setdefault(key, bytearray()).extend(payload[:count])
        elif op == "read":
            got.setdefault((not side, stream.stream_id), bytearray()).extend(
                conn.read(stream, size)
            )
        elif op == "close":
            conn.close_stream(stream)
        elif op == "abandon" and not stream.discard:
            abandoned.add((not side, stream.stream_id))
            conn.abandon_stream(stream)
        for one in (*streams[True], *streams[False]):
            assert one.send_window >= 0
            assert one.recv_window >= 0
            assert one.recv_window + len(one.buffer) <= INITIAL_WINDOW
    flush(True)
    flush(False)
    flush(True)
    for side in (True, False):
        for stream in streams[side]:
            if stream.discard:
                continue
            key = (not side, stream.stream_id)
            got.setdefault(key, bytearray()).extend(sides[side].read(stream, 10**9))
    for key, data in got.items():
        if key in sent and key not in abandoned:
            assert bytes(data) == bytes(sent[key])


# ----------------------------------------------------------------------------- engine

QUIET = YamuxConfig(keepalive_interval=None)


@asynccontextmanager
async def session_pair(
    client_config: YamuxConfig = QUIET, server_config: YamuxConfig = QUIET
) -> AsyncIterator[tuple[YamuxSession, YamuxSession]]:
    a, b = memory_stream_pair()
    client = YamuxSession(a, client=True, config=client_config)
    server = YamuxSession(b, client=False, config=server_config)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await nursery.start(server.run)
        yield client, server
        client.close()
        server.close()


async def _read_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some():
        data += chunk
    return bytes(data)


async def test_many_concurrent_streams_echo(autojump_clock: trio.testing.MockClock) -> None:
    async with session_pair() as (client, server):

        async def echo_server() -> None:
            async with trio.open_nursery() as handlers:
                for _ in range(100):
                    stream = await server.accept_stream()
                    handlers.start_soon(echo, stream)

        async def echo(stream: YamuxStream) -> None:
            async with stream:
                while data := await stream.receive_some():
                    await stream.send_all(data)
                await stream.send_eof()

        results: dict[int, bytes] = {}

        async def call(index: int) -> None:
            stream = await client.open_stream()
            payload = bytes([index]) * (1000 + index * 997)
            async with trio.open_nursery() as both:
                both.start_soon(_send_then_eof, stream, payload)
                results[index] = await _read_all(stream)
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo_server)
            for index in range(100):
                nursery.start_soon(call, index)
        assert results == {i: bytes([i]) * (1000 + i * 997) for i in range(100)}
        assert client.num_streams == 0


async def _send_then_eof(stream: YamuxStream, payload: bytes) -> None:
    await stream.send_all(payload)
    await stream.send_eof()


async def test_slow_reader_blocks_the_writer(autojump_clock: trio.testing.MockClock) -> None:
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        progress = 0
        chunk = 32 * 1024

        async def writer() -> None:
            nonlocal progress
            for _ in range(32):  # 1 MiB, four windows
                await stream.send_all(bytes(chunk))
                progress += chunk
            await stream.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            incoming = await server.accept_stream()
            await trio.testing.wait_all_tasks_blocked()
            # Exactly one window is in flight and buffered at the reader; the writer waits.
            assert progress == INITIAL_WINDOW
            assert incoming._state.recv_window == 0
            assert len(incoming._state.buffer) == INITIAL_WINDOW
            assert client._conn.pending_output == 0
            # Reading less than half the window sends no update: the writer stays blocked.
            assert len(await incoming.receive_some(64 * 1024)) == 64 * 1024
            await trio.testing.wait_all_tasks_blocked()
            assert progress == INITIAL_WINDOW
            # Half the window consumed: one update, the writer moves on by exactly that much.
            assert len(await incoming.receive_some(64 * 1024)) == 64 * 1024
            await trio.testing.wait_all_tasks_blocked()
            assert progress == INITIAL_WINDOW + 128 * 1024
            assert len(incoming._state.buffer) <= INITIAL_WINDOW
            rest = await _read_all(incoming)
        assert len(rest) + 128 * 1024 == 32 * chunk


async def test_unread_transport_blocks_senders_then_write_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, _silent = memory_stream_pair(chunks=4)  # nobody ever reads the far end
    config = YamuxConfig(keepalive_interval=None, max_buffered_output=64 * 1024)
    session = YamuxSession(a, client=True, config=config)
    async with trio.open_nursery() as nursery:
        await nursery.start(session.run)
        streams = [await session.open_stream() for _ in range(8)]
        outcome = {"sent": 0, "failed": 0}

        async def flood(stream: YamuxStream) -> None:
            try:
                await stream.send_all(bytes(INITIAL_WINDOW))
                outcome["sent"] += 1
            except trio.BrokenResourceError:
                outcome["failed"] += 1

        for stream in streams:
            nursery.start_soon(flood, stream)
        await trio.testing.wait_all_tasks_blocked()
        # Output waiting for the transport stays bounded by the mark plus one frame.
        assert session._conn.pending_output <= 64 * 1024 + INITIAL_WINDOW + 12
        start = trio.current_time()
    # The writer gave up after the 10 s write timeout; every blocked sender was released.
    assert trio.current_time() - start == pytest.approx(10, abs=0.1)
    assert outcome["failed"] >= 3  # the transport took at most 4 batches before it blocked
    assert outcome["sent"] + outcome["failed"] == 8
    assert session.error is not None and "write timeout" in str(session.error)


async def test_ping_round_trip_and_keepalive_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with session_pair() as (client, server):
        assert await client.ping() == 0
        assert await server.ping() == 0
    # A peer that reads but never answers: the keep-alive ping fails after 30 + 10 s.
    a, b = memory_stream_pair()
    session = YamuxSession(a, client=True, config=YamuxConfig())
    seen = bytearray()

    async def deaf_peer() -> None:
        while data := await b.receive_some():
            seen.extend(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(deaf_peer)
        await nursery.start(session.run)
        await session.wait_closed()
    assert trio.current_time() == pytest.approx(40, abs=0.1)
    assert str(session.error) == "keepalive timeout"
    assert seen.startswith(frame(PING, SYN, 0, 0))


async def test_go_away_on_close(autojump_clock: trio.testing.MockClock) -> None:
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        incoming = await server.accept_stream()
        await stream.send_all(b"before close")
        assert await incoming.receive_some() == b"before close"
        server.close()
        await server.wait_closed()
        with pytest.raises(trio.BrokenResourceError):
            await client.open_stream()
        with pytest.raises(trio.BrokenResourceError):
            await stream.receive_some()
        with pytest.raises(trio.ClosedResourceError):
            await server.accept_stream()
        await client.wait_closed()
        assert client.is_closed


async def test_go_away_refuses_new_streams_only(autojump_clock: trio.testing.MockClock) -> None:
    async with session_pair() as (client, server):
        old = await client.open_stream()
        old_in = await server.accept_stream()
        server.go_away()
        await trio.testing.wait_all_tasks_blocked()
        assert client.remote_go_away
        with pytest.raises(trio.BrokenResourceError, match="not accepting"):
            await client.open_stream()
        await old.send_all(b"still fine")
        assert await old_in.receive_some() == b"still fine"


async def test_reset_half_close_and_cancellation(autojump_clock: trio.testing.MockClock) -> None:
    async with session_pair() as (client, server):
        stream = await client.open_stream()
        incoming = await server.accept_stream()
        # A cancelled receive leaves the stream usable.
        with trio.move_on_after(1):
            await incoming.receive_some()
        await stream.send_all(b"x")
        assert await incoming.receive_some() == b"x"
        # Half-close one way; the other way still flows.
        await stream.send_eof()
        assert await incoming.receive_some() == b""
        await incoming.send_all(b"reply")
        assert await stream.receive_some() == b"reply"
        with pytest.raises(trio.ClosedResourceError):
            await stream.send_all(b"after eof")
        # Reset: the peer's reads and writes fail.
        incoming.reset()
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BrokenResourceError, match="reset"):
            await stream.receive_some()
        # Concurrent receives are refused, as trio streams must.
        other = await client.open_stream()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await other.receive_some()
            nursery.cancel_scope.cancel()


async def test_cancelling_run_ends_streams(autojump_clock: trio.testing.MockClock) -> None:
    a, b = memory_stream_pair()
    client = YamuxSession(a, client=True, config=QUIET)
    server = YamuxSession(b, client=False, config=QUIET)
    async with trio.open_nursery() as outer:
        await outer.start(server.run)
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as inner:
                await inner.start(client.run)
                stream = await client.open_stream()
                scope.cancel()
        assert scope.cancelled_caught
        with pytest.raises(trio.BrokenResourceError):
            await stream.send_all(b"x")
        await server.wait_closed()  # the transport was closed: the peer sees EOF
    assert client.is_closed and server.is_closed


async def test_accept_backlog_resets_streams_beyond_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with session_pair(
        server_config=YamuxConfig(keepalive_interval=None, accept_backlog=3)
    ) as (
        client,
        server,
    ):
        streams = [await client.open_stream() for _ in range(5)]
        await trio.testing.wait_all_tasks_blocked()
        for stream in streams[:3]:
            await stream.send_all(b"hi")
        for stream in streams[3:]:
            with pytest.raises(trio.BrokenResourceError, match="reset"):
                await stream.receive_some()
            with pytest.raises(trio.BrokenResourceError, match="reset"):
                await stream.send_all(b"hi")
        accepted = [await server.accept_stream() for _ in range(3)]
        assert [s.stream_id for s in accepted] == [1, 3, 5]


async def test_frame_type_names() -> None:
    assert [t.name for t in FrameType] == ["DATA", "WINDOW_UPDATE", "PING", "GO_AWAY"]


def test_unread_input_over_all_streams_is_bounded_by_resetting_the_fullest() -> None:
    server = YamuxConnection(client=False)
    window = 256 * 1024
    opens = b"".join(frame(WINDOW_UPDATE, SYN, sid, 0) for sid in range(1, 41, 2))
    server.receive_data(opens)
    # 20 streams, each sent its whole window, none read: 5 MiB held.
    for sid in range(1, 41, 2):
        server.receive_data(frame(DATA, 0, sid, window) + b"x" * window)
    server.data_to_send()
    assert server.buffered_input == 20 * window
    # A stream partly read holds less and is kept over the full ones.
    assert server.read(server.streams[1], window // 2) == b"x" * (window // 2)
    server.data_to_send()  # the window update that read earned
    shed = server.shed_input(4 * 1024 * 1024)
    assert len(shed) == 4 and 1 not in shed
    assert server.buffered_input == 20 * window - window // 2 - 4 * window
    assert server.data_to_send() == b"".join(frame(WINDOW_UPDATE, RST, sid, 0) for sid in shed)
    assert server.shed_input(4 * 1024 * 1024) == []


async def test_a_session_whose_streams_nobody_reads_resets_them_past_its_input_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limit = 1024 * 1024
    async with session_pair(
        server_config=YamuxConfig(keepalive_interval=None, max_buffered_input=limit)
    ) as (client, server):
        streams = [await client.open_stream() for _ in range(8)]
        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(stream.send_all, b"y" * 256 * 1024)
        await trio.testing.wait_all_tasks_blocked()
        assert server._conn.buffered_input <= limit
        assert server.streams_shed == 4
        reset = 0
        for stream in streams:
            # A stream that was kept has no window left (nobody reads): its send waits.
            with trio.move_on_after(1):
                try:
                    await stream.send_all(b"more")
                except trio.BrokenResourceError:
                    reset += 1
        assert reset == 4
