"""Regression: frames of a stopped stream that arrive after the reply to its ``stop``.

serf 0.8.2's agent does not stop a log stream at once: ``stop`` closes the stream's queue and
replies, and the streaming goroutine still sends every line already queued (up to hundreds,
measured against /usr/bin/serf), each a header ``{Error, Seq}`` and a body ``{Log}``, after
that reply. Our client used to forget the Seq when the stop reply came, so a late header was
read as one of unknown Seq without a body, and its body was then taken for the next response
header: ``AgentGoneError: bad response ... response header needs Seq (uint64) and Error
(str)`` on the next call (``tests/interop/test_go_rpc_interop.py`` failed so, now and then).

The fake agent here behaves as serf's does, deterministically: the queued frames of a stopped
stream go out when the next request comes (after the client has finished with the stop), and
each header and its body in separate chunks, as two TCP segments.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from agentrpc.client import BaseClient, Client, SerfClient
from agentrpc.protocol.codec import (
    RETIRED_STREAMS,
    RequestDecoder,
    Response,
    ResponseDecoder,
    ResponseEncoder,
)
from agentrpc.transports import memory_stream_pair

STATS = {"agent": {"name": "go-serf"}, "runtime": {"os": "linux"}}


class LaggingAgent:
    """Serf's agent RPC as far as these tests need it (handshake, stats, monitor, stream,
    stop), with serf's lag: ``queued`` frames of a stream follow the reply to its stop."""

    def __init__(self, stream: trio.abc.Stream, *, queued: int) -> None:
        self.stream = stream
        self.queued = queued
        self.encoder = ResponseEncoder()
        self.open: dict[int, str] = {}
        """Seq of each open stream -> its command."""
        self.owed: list[tuple[int, str]] = []
        """Stopped streams whose queued frames are still to go out."""
        self.stragglers_sent = 0

    def frame_body(self, command: str, index: int) -> dict[str, Any]:
        if command == "monitor":
            return {"Log": f"2026/01/01 00:00:00 [DEBUG] queued line {index}"}
        return {"Event": "user", "LTime": index, "Name": "deploy", "Payload": b"", "Coalesce": True}

    async def send_frame(self, seq: int, body: Any) -> None:
        # A header and its body as two segments: the client sees the header alone first.
        await self.stream.send_all(self.encoder.header(seq))
        await trio.testing.wait_all_tasks_blocked()
        await self.stream.send_all(self.encoder.body(body))

    async def run(self) -> None:
        decoder = RequestDecoder()
        while data := await self.stream.receive_some():
            decoder.feed(data)
            for request in decoder:
                # Before anything else is answered, serf's streamer empties its queue.
                for seq, command in self.owed:
                    for index in range(self.queued):
                        await self.send_frame(seq, self.frame_body(command, index))
                        self.stragglers_sent += 1
                self.owed.clear()
                await self.answer(request.command, request.seq, request.body)

    async def answer(self, command: str, seq: int, body: Any) -> None:
        send = self.stream.send_all
        if command in ("handshake", "force-leave"):
            await send(self.encoder.header(seq))
        elif command == "stats":
            await send(self.encoder.response(seq, "", STATS))
        elif command in ("monitor", "stream"):
            await send(self.encoder.header(seq))  # the ack: a header alone
            self.open[seq] = command
            await self.send_frame(seq, self.frame_body(command, -1))  # the first item
        elif command == "stop":
            stopped = body["Stop"]
            kind = self.open.pop(stopped, None)
            await send(self.encoder.header(seq))
            if kind is not None:
                self.owed.append((stopped, kind))
        else:
            await send(self.encoder.header(seq, "Unsupported command"))


async def _run_cycles(client: BaseClient, agent: LaggingAgent, kind: str, cycles: int) -> None:
    for _ in range(cycles):
        if kind == "monitor":
            async with client.monitor("debug") as lines:
                assert "[DEBUG] queued line -1" in await lines.__anext__()
        else:
            assert isinstance(client, SerfClient)
            async with client.stream("user") as events:
                assert (await events.__anext__())["Name"] == "deploy"
        # The next call is answered after the stopped stream's stragglers: still in sync.
        assert (await client.stats())["agent"]["name"] == "go-serf"


@pytest.mark.parametrize("kind", ["monitor", "stream"])
async def test_frames_after_the_stop_reply_are_dropped_in_sync(kind: str) -> None:
    ours, theirs = memory_stream_pair()
    agent = LaggingAgent(theirs, queued=5)
    cls = Client if kind == "monitor" else SerfClient
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.run)
        async with cls(stream=ours) as client:
            await _run_cycles(client, agent, kind, cycles=3)
            assert agent.stragglers_sent == 15
            # Stragglers before a reply without a body, then one with: both still in sync.
            async with client.monitor("debug") as lines:
                await lines.__anext__()
            await client.force_leave("nobody")
            assert agent.stragglers_sent == 20
            assert "runtime" in await client.stats()
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------------------------
# The decoder alone.


def _feed_bytewise(decoder: ResponseDecoder, data: bytes) -> list[Response]:
    out: list[Response] = []
    for index in range(len(data)):
        decoder.feed(data[index : index + 1])
        out.extend(decoder)
    return out


def test_a_retired_streams_frames_are_read_whole_and_dropped() -> None:
    encoder = ResponseEncoder()
    decoder = ResponseDecoder()
    decoder.expect(1, body=False, stream=True)
    decoder.expect(2, body=True)
    acked = _feed_bytewise(decoder, encoder.header(1) + encoder.response(1, "", {"Log": "a"}))
    assert [r.body for r in acked] == [None, {"Log": "a"}]
    decoder.retire(1)
    late = b"".join(encoder.response(1, "", {"Log": f"late {i}"}) for i in range(3))
    out = _feed_bytewise(decoder, late + encoder.response(2, "", {"Num": 1}))
    assert [(r.seq, r.error, r.body) for r in out] == [(2, "", {"Num": 1})]


def test_forget_still_means_a_bare_header() -> None:
    """Only ``retire`` (a stopped stream) expects bodies; a forgotten Seq is unknown, and
    unknown headers carry none, as before."""
    encoder = ResponseEncoder()
    decoder = ResponseDecoder()
    decoder.expect(3, body=False, stream=True)
    decoder.forget(3)
    decoder.expect(4, body=False)
    out = _feed_bytewise(
        decoder, encoder.header(3, "Stream with given sequence exists") + encoder.header(4)
    )
    assert [(r.seq, r.error) for r in out] == [(3, "Stream with given sequence exists"), (4, "")]


def test_retiring_a_stream_not_acked_yet_keeps_its_ack_bare() -> None:
    encoder = ResponseEncoder()
    decoder = ResponseDecoder()
    decoder.expect(1, body=False, stream=True)
    decoder.retire(1)
    decoder.expect(2, body=False)
    data = encoder.header(1) + encoder.response(1, "", {"Log": "x"}) + encoder.header(2)
    out = _feed_bytewise(decoder, data)
    assert [(r.seq, r.body) for r in out] == [(1, None), (1, {"Log": "x"}), (2, None)]


def test_expect_again_after_retire_and_the_bound() -> None:
    encoder = ResponseEncoder()
    decoder = ResponseDecoder()
    # A retired Seq expected again (a raw caller reusing it) is no longer dropped.
    decoder.expect(1, body=False, stream=True)
    _feed_bytewise(decoder, encoder.header(1))
    decoder.retire(1)
    decoder.expect(1, body=False)
    assert [(r.seq, r.body) for r in _feed_bytewise(decoder, encoder.header(1))] == [(1, None)]
    # Only the newest RETIRED_STREAMS stopped streams are remembered.
    first = 10
    for seq in range(first, first + RETIRED_STREAMS + 1):
        decoder.expect(seq, body=True, stream=True)  # acked: every frame has a body
        decoder.retire(seq)
    newest = first + RETIRED_STREAMS
    out = _feed_bytewise(
        decoder,
        encoder.response(newest, "", {"Log": "dropped"}) + encoder.header(first),
    )
    assert [(r.seq, r.body) for r in out] == [(first, None)]  # the oldest is unknown again
