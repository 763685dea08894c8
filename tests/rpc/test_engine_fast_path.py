"""The engine's hot path (issue 17): plain ``stop`` answered by the decoder, replies written by
the reader when the writer is idle (and queued behind the writer, in order and within the byte
budget, when the peer does not read), reads that try the socket before waiting, and the opt-in
``rpc_spin_us`` polling."""

from __future__ import annotations

import socket
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from rpc_helpers import RawConnection, poll_until, running_agent

from agentrpc.agent import limits_from
from agentrpc.config import ConfigError, load_config
from agentrpc.protocol.bodies import BODY_DECODERS
from agentrpc.protocol.codec import (
    PAUSED,
    PULL_BYTES,
    SPARE_BUFFER,
    ParserPool,
    Request,
    RequestDecoder,
    Response,
    ResponseEncoder,
)
from agentrpc.protocol.errors import ProtocolError
from agentrpc.protocol.rpc_session import RPCSession
from agentrpc.rpc_connection import FLUSH_BYTES
from agentrpc.serf_session import SerfSession
from agentrpc.transports.fastpath import (
    READS_BEFORE_YIELD,
    SocketReceiver,
    receiver,
    split_receiver,
)
from agentrpc.transports.memory import memory_stream_pair

OK = ResponseEncoder().header


def frame(command: str, seq: int, body: Any = None, token: str = "") -> bytes:
    head: bytes = msgpack.packb({"Command": command, "Seq": seq, "Token": token})
    return head if body is None else head + msgpack.packb(body)


def stop(seq: int, target: int = 0) -> bytes:
    return frame("stop", seq, {"Stop": target})


def decoder() -> RequestDecoder:
    return RequestDecoder(body_decoders=BODY_DECODERS)


def pull_all(
    dec: RequestDecoder, out: list[bytes], monitor_seq: int | None = None
) -> list[Request]:
    """Every request the decoder hands back (plain stops answered into ``out``)."""
    requests = []
    while (request := dec.pull(out, True, monitor_seq)) is not None:
        if request is not PAUSED:
            requests.append(request)
    return requests


# ----------------------------------------------------------------------------- the decoder


def test_plain_stops_are_answered_in_order_and_the_rest_handed_back() -> None:
    dec = decoder()
    dec.feed(stop(2) + frame("members-lan", 3) + stop(4, target=9) + stop(5, target=1))
    out: list[bytes] = []
    first = dec.pull(out, True, 9)
    assert first == Request("members-lan", 3, "", None)
    assert out == [OK(2)]
    # The stop of the active monitor needs the session: handed back, not answered.
    assert dec.pull(out, True, 9) == Request("stop", 4, "", 9)
    assert dec.pull(out, True, 9) is None
    assert out == [OK(2), OK(5)]
    assert dec.answered == 2


def test_without_plain_stop_every_request_is_handed_back() -> None:
    dec = decoder()
    dec.feed(stop(2) + stop(3))
    out: list[bytes] = []
    assert pull_all_plain_off(dec, out) == [Request("stop", 2, "", 0), Request("stop", 3, "", 0)]
    assert out == []
    assert dec.answered == 0


def pull_all_plain_off(dec: RequestDecoder, out: list[bytes]) -> list[Request]:
    requests = []
    while (request := dec.pull(out, False)) is not None:
        requests.append(request)
    return requests


def test_the_fast_path_gives_the_same_answers_as_iterating_in_7_byte_slices() -> None:
    stream = b"".join(
        [
            stop(2),
            frame("stats", 3),
            frame("stop", 4, [0]),  # positional body: decoded by the session's path
            stop(5, target=7),
            frame("monitor", 6, {"LogLevel": "info"}),
            stop(8),
        ]
    )
    whole = list(decoder_fed(stream))
    dec = decoder()
    out: list[bytes] = []
    handed: list[Request] = []
    for start in range(0, len(stream), 7):
        dec.feed(stream[start : start + 7])
        handed.extend(pull_all(dec, out, monitor_seq=7))
    assert out == [OK(2), OK(8)]
    assert handed == [r for r in whole if r.seq not in (2, 8)]
    assert dec.answered == 2


def decoder_fed(data: bytes) -> RequestDecoder:
    dec = decoder()
    dec.feed(data)
    return dec


@pytest.mark.parametrize("body", [{"Stop": -1}, {"Stop": "x"}, {"Stop": True}, "stop"])
def test_a_bad_stop_body_is_refused_with_its_seq(body: Any) -> None:
    dec = decoder()
    dec.feed(stop(2) + frame("stop", 3, body) + stop(4))
    out: list[bytes] = []
    with pytest.raises(ProtocolError) as raised:
        pull_all(dec, out)
    assert (raised.value.seq, raised.value.command) == (3, "stop")
    assert out == [OK(2)]  # what came before is answered; nothing after it
    assert dec.answered == 1


def test_a_bad_header_and_undecodable_bytes_are_refused() -> None:
    dec = decoder()
    dec.feed(stop(2) + msgpack.packb({"Command": "stop", "Seq": -3}))
    out: list[bytes] = []
    with pytest.raises(ProtocolError):
        pull_all(dec, out)
    assert out == [OK(2)]
    dec = decoder()
    dec.feed(frame("stop", 5) + b"\xc1")  # 0xc1 is never used in msgpack
    with pytest.raises(ProtocolError) as raised:
        pull_all(dec, [])
    assert raised.value.seq == 5


def test_a_long_run_of_stops_pauses_so_the_engine_can_let_others_run() -> None:
    count = 3 * PULL_BYTES // len(stop(1000)) + 10
    dec = decoder()
    dec.feed(b"".join(stop(seq) for seq in range(1000, 1000 + count)))
    out: list[bytes] = []
    results = []
    while (request := dec.pull(out, True)) is not None:
        results.append(request)
    assert results and all(r is PAUSED for r in results)
    assert len(results) == 3
    assert out == [OK(seq) for seq in range(1000, 1000 + count)]


def test_parsers_are_reused_and_never_while_a_request_is_partial() -> None:
    pool = ParserPool()
    first, second = (RequestDecoder(body_decoders=BODY_DECODERS, parsers=pool) for _ in "ab")
    data = stop(2) + stop(3)
    first.feed(data)
    out: list[bytes] = []
    assert first.pull(out, True) is None  # the buffer ended on a boundary: released
    assert pool.idle(first.max_frame_size) == 1
    # A second decoder takes the spare parser; its offsets are that parser's own.
    second.feed(data[:10])
    assert pool.idle(first.max_frame_size) == 0
    assert second.pull(out, True) is None
    first.feed(data[:20])
    assert first.pull(out, True) is None
    second.feed(data[10:])
    first.feed(data[20:])
    assert second.pull(out, True) is None
    assert first.pull(out, True) is None
    assert out == [OK(2), OK(3)] * 3
    assert pool.idle(first.max_frame_size) == 2


def test_a_parser_pool_is_bounded_and_keeps_no_grown_parser() -> None:
    pool = ParserPool(limit=2)
    decoders = [RequestDecoder(body_decoders=BODY_DECODERS, parsers=pool) for _ in range(4)]
    out: list[bytes] = []
    for dec in decoders:
        dec.feed(stop(1)[:3])  # each holds its own parser now
    for dec in decoders:
        dec.feed(stop(1)[3:])
        assert dec.pull(out, True) is None
    assert pool.idle(decoders[0].max_frame_size) == 2  # the other two were dropped
    roomy = ParserPool()
    big = RequestDecoder(body_decoders=BODY_DECODERS, parsers=roomy)
    payload = frame("event", 1, {"Name": "x", "Payload": b"p" * (SPARE_BUFFER + 1)})
    big.feed(payload)
    assert [r.command for r in pull_all(big, out)] == ["event"]
    assert big._unpacker is None  # let go, and not kept: its buffer grew
    assert roomy.idle(big.max_frame_size) == 0
    kept = RequestDecoder(body_decoders=BODY_DECODERS, parsers=roomy, keep_parser=True)
    kept.feed(payload)
    assert [r.command for r in pull_all(kept, out)] == ["event"]
    kept.release_idle()
    assert kept._unpacker is None and roomy.idle(kept.max_frame_size) == 0
    with pytest.raises(ValueError):
        ParserPool(limit=-1)


# ----------------------------------------------------------------------------- the session


def test_plain_stop_only_when_the_session_says_a_stop_needs_nothing_of_it() -> None:
    session = RPCSession(set(), set())
    assert not session.plain_stop  # before the handshake: the gate decides
    session.receive(Request("handshake", 1, "", 1))
    assert session.plain_stop
    session.token = "secret"
    assert not session.plain_stop  # every request's token must be checked
    session.token = ""
    session.receive(Request("nope", 2, "", None))
    assert not session.plain_stop  # closed
    serf = SerfSession(set(), set())
    serf.receive(Request("handshake", 1, "", 1))
    assert not serf.plain_stop  # another dialect decides every request itself


# ----------------------------------------------------------------------------- the engine


async def test_a_monitor_stop_in_a_batch_of_plain_stops_ends_the_stream(transport: str) -> None:
    async with running_agent(transport) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        monitor_seq = await conn.request("monitor", {"LogLevel": "trace"})
        (ack,) = await conn.read(1)
        assert ack == Response(monitor_seq, "", None)
        for seq in range(3, 13):
            conn.decoder.expect(seq, body=False)
        conn.decoder.retire(monitor_seq)  # its lines before the stop reply are dropped
        batch = [stop(seq) for seq in range(3, 8)]
        batch += [stop(8, target=monitor_seq)]
        batch += [stop(seq) for seq in range(9, 13)]
        await conn.send_bytes(b"".join(batch))
        with trio.fail_after(5):
            replies = await conn.read(10)
        assert replies == [Response(seq, "", None) for seq in range(3, 13)]
        await poll_until(lambda: agent.rpc_stats.monitors == 0)
        await conn.aclose()


async def test_stop_counts_and_tokens_on_the_fast_path(transport: str) -> None:
    async with running_agent(transport, rpc_token="s3cret") as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        for seq in (2, 3):
            conn.decoder.expect(seq, body=False)
        await conn.send_bytes(
            frame("stop", 2, {"Stop": 0}, token="s3cret") + frame("stop", 3, {"Stop": 0})
        )
        with trio.fail_after(5):
            replies = await conn.read(2)
        assert replies == [Response(2, "", None), Response(3, "Permission denied", None)]
        assert agent.rpc_stats.permission_denied == 1
        await conn.aclose()
    async with running_agent(transport) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        before_in, before_out = agent.rpc_stats.frames_in, agent.rpc_stats.frames_out
        for seq in range(2, 1002):
            conn.decoder.expect(seq, body=False)
        await conn.send_bytes(b"".join(stop(seq) for seq in range(2, 1002)))
        with trio.fail_after(5):
            replies = await conn.read(1000)
        assert [r.seq for r in replies] == list(range(2, 1002))
        assert agent.rpc_stats.frames_in - before_in == 1000
        assert agent.rpc_stats.frames_out - before_out == 1000
        await conn.aclose()


async def stalled_client(agent: Any) -> RawConnection:
    """A handshaken TCP connection with a tiny receive buffer (it reads only when told)."""
    conn = await RawConnection.open(agent)
    sock = getattr(conn.stream, "socket", None)
    assert sock is not None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await conn.handshake()
    return conn


async def test_a_peer_that_does_not_read_falls_back_to_the_writer_in_order_and_in_budget() -> None:
    limit = 16 * 1024
    count = 20_000
    # Every tenth request a stats (a few KiB of reply): the kernel's buffers fill quickly.
    commands = ["stats" if seq % 10 == 0 else "stop" for seq in range(2, 2 + count)]
    # A unix socket: small kernel buffers, and a reader that catches up at full speed.
    async with running_agent("unix", send_queue_bytes=limit, send_queue_size=100_000) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        frames = []
        for seq, command in zip(range(2, 2 + count), commands, strict=True):
            conn.decoder.expect(seq, body=command == "stats")
            frames.append(stop(seq) if command == "stop" else frame("stats", seq))
        budget = agent.send_budget
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.send_bytes, b"".join(frames))
            # The replies stop fitting in the kernel: the reader queues them for the writer
            # and, past the connection's budget, stops reading.
            await poll_until(lambda: budget.used > limit // 2)
            # The budget, plus one hand-over of the reader (at most FLUSH_BYTES and the frame
            # that passed it: a stats reply is a few KiB).
            bound = limit + FLUSH_BYTES + 8 * 1024
            assert budget.peak <= bound
            # Meanwhile another client is answered at once.
            good = await RawConnection.open(agent)
            await good.handshake()
            with trio.fail_after(5):
                assert (await good.call("stop", {"Stop": 0})).error == ""
                assert (await good.call("stats", reply_body=True)).error == ""
            await good.aclose()
            # Reading again, every reply comes, once and in order.
            with trio.fail_after(60):
                replies = await conn.read(count)
        assert [r.seq for r in replies] == list(range(2, 2 + count))
        assert all(
            (r.body is None) == (c == "stop") for r, c in zip(replies, commands, strict=True)
        )
        assert budget.peak <= bound + 8 * 1024  # and the good client's stats reply
        await conn.aclose()
        await poll_until(lambda: budget.used == 0)


async def test_a_peer_that_never_reads_holds_at_most_its_budget_and_closes_cleanly() -> None:
    limit = 16 * 1024
    async with running_agent("tcp", send_queue_bytes=limit) as agent:
        conn = await stalled_client(agent)
        budget = agent.send_budget
        with trio.move_on_after(2):
            while True:
                await conn.send_bytes(stop(7) * 5000)
        assert limit // 2 < budget.peak <= limit + PULL_BYTES
        await conn.aclose()
        await poll_until(lambda: budget.used == 0 and agent.rpc_stats.connections == 0)


# ----------------------------------------------------------------------------- reading sockets


async def test_the_socket_receiver_reads_eof_and_breaks_like_receive_some() -> None:
    left, right = trio.socket.socketpair()
    stream = trio.SocketStream(left)
    receive = receiver(stream)
    assert isinstance(receive.__self__, SocketReceiver)  # type: ignore[attr-defined]
    await right.send(b"hello")
    assert await receive(100) == b"hello"
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(right.send, b"later")
            assert await receive(100) == b"later"  # waited in the event loop
    right.close()
    assert await receive(100) == b""
    await stream.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await receive(100)


async def test_a_broken_connection_raises_broken_resource() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = trio.socket.socket()
    await client.connect(listener.getsockname())
    server, _ = await listener.accept()
    receive = receiver(trio.SocketStream(server))
    # An abortive close: the peer sends a reset.
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
        while await receive(100):
            pass
    server.close()
    listener.close()


async def test_reads_that_find_data_still_let_others_run_and_a_cancel_in() -> None:
    left, right = trio.socket.socketpair()
    receive = receiver(trio.SocketStream(left))
    await right.send(b"x" * 4 * READS_BEFORE_YIELD)
    others_ran = False

    async def other() -> None:
        nonlocal others_ran
        others_ran = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        for _ in range(READS_BEFORE_YIELD + 1):
            assert await receive(1) == b"x"
    assert others_ran
    reads = 0
    with trio.CancelScope() as scope:
        scope.cancel()
        while True:
            await receive(1)
            reads += 1
    assert reads <= READS_BEFORE_YIELD
    left.close()
    right.close()


async def test_the_split_receiver_tries_now_and_waits_only_when_told() -> None:
    left, right = trio.socket.socketpair()
    try_receive, receive = split_receiver(trio.SocketStream(left))
    assert try_receive(100) is None  # empty: await receive
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(right.send, b"later")
            assert await receive(100) == b"later"  # no second attempt, it waited
    await right.send(b"now")
    assert try_receive(100) == b"now"
    # Reads that found data count toward the schedule point: then try_receive says wait,
    # and receive lets others run before it reads.
    await right.send(b"x" * 2 * READS_BEFORE_YIELD)
    got = sum(try_receive(1) is not None for _ in range(READS_BEFORE_YIELD))
    assert got == READS_BEFORE_YIELD - 1  # the read of b"now" counted too
    assert try_receive(1) is None
    with trio.testing.assert_checkpoints():
        assert await receive(1) == b"x"
    assert try_receive(1) == b"x"
    right.close()
    while (data := try_receive(1000)) is not None and data:
        pass
    assert data == b""  # EOF is b"", not None
    left.close()


async def test_a_split_receiver_of_another_stream_always_waits() -> None:
    a, b = memory_stream_pair()
    try_receive, receive = split_receiver(a)
    await b.send_all(b"data")
    assert try_receive(100) is None
    assert await receive(100) == b"data"


def test_a_kept_parser_is_let_go_only_when_nothing_is_partial() -> None:
    dec = RequestDecoder(body_decoders=BODY_DECODERS, keep_parser=True)
    out: list[bytes] = []
    dec.feed(stop(1))
    assert pull_all(dec, out) == [] and out == [OK(1)]
    assert dec._unpacker is not None  # kept while the client keeps sending
    dec.feed(stop(2)[:3])
    assert pull_all(dec, out) == []
    dec.release_idle()
    assert dec._unpacker is not None  # a partial frame is never dropped
    dec.feed(stop(2)[3:])
    assert pull_all(dec, out) == [] and out == [OK(1), OK(2)]
    dec.release_idle()
    assert dec._unpacker is None  # idle: msgpack's parser state is let go
    dec.feed(frame("stats", 3))
    assert pull_all(dec, out) == [Request("stats", 3, "", None)]


async def test_memory_streams_keep_their_own_receive() -> None:
    a, b = memory_stream_pair()
    receive = receiver(a, spin_us=1000)
    await b.send_all(b"data")
    assert await receive(100) == b"data"


# ----------------------------------------------------------------------------- rpc_spin_us


def test_rpc_spin_us_is_validated_and_reaches_the_engine_limits() -> None:
    config = load_config((), {"rpc_spin_us": 250})
    assert limits_from(config).spin_us == 250
    assert limits_from(load_config((), {})).spin_us == 0
    with pytest.raises(ConfigError):
        load_config((), {"rpc_spin_us": 100_001})


async def test_spinning_connections_answer_correctly(transport: str) -> None:
    async with running_agent(transport, rpc_spin_us=2000) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        with trio.fail_after(10):
            for _ in range(50):  # sequential round trips: each read may find data by polling
                assert (await conn.call("stop", {"Stop": 0})).error == ""
            members = await conn.call("members-lan", reply_body=True)
            assert members.body["Members"][0]["Name"] == "node1"
            for seq in range(100, 1100):
                conn.decoder.expect(seq, body=False)
            await conn.send_bytes(b"".join(stop(seq) for seq in range(100, 1100)))
            replies = await conn.read(1000)
        assert [r.seq for r in replies] == list(range(100, 1100))
        await conn.aclose()


async def test_spinning_still_honours_the_idle_timeout() -> None:
    async with running_agent("tcp", rpc_spin_us=100_000, idle_timeout=0.5) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        start = trio.current_time()
        with trio.fail_after(5):
            assert await conn.read_until_eof() == []
        # Closed after the idle timeout (armed when the handshake was answered; the client
        # may see that reply up to one spin later), late by at most about one spin (0.1 s).
        assert 0.35 <= trio.current_time() - start < 2.0
        assert agent.rpc_stats.idle_timeouts == 1


async def test_spinning_connections_close_promptly_at_shutdown() -> None:
    async with running_agent("tcp", rpc_spin_us=100_000) as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        assert (await conn.call("stop", {"Stop": 0})).error == ""
        start = trio.current_time()
        agent.shutdown()
        with trio.fail_after(5):
            await conn.read_until_eof()
        assert trio.current_time() - start < 3.0
