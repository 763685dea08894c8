"""The best bare Trio servers of issue 17: the agent RPC framing answered as fast as Trio allows.

Reference points for the engine, not agents: each speaks just enough of the protocol to be
correct for the benchmark (the handshake gate, ``handshake`` with its Version check, ``stop``,
replies in order with the Seq echoed; any other command gets ``Unsupported command`` and the
connection closes, as the reference does; input that does not decode closes the connection
without a reply). What they leave out is everything that makes an agent: no handlers, no
budgets beyond one bounded buffer per connection, no logging.

``python -m benchmarks.bare_servers streams --port P``
    ``trio.serve_tcp`` and its ``SocketStream``: ``receive_some`` of 64 KiB (agentrpc's read
    size), a streaming ``msgpack.Unpacker``, the replies of one read joined and sent with one
    ``send_all``. The plainest fast Trio server.

``python -m benchmarks.bare_servers raw --port P``
    Stdlib sockets, non-blocking, under Trio: ``recv_into`` is tried first and only an empty
    socket waits (``trio.lowlevel.wait_readable``), so a read that finds data costs no pass
    through the scheduler; sends likewise try ``send`` before ``wait_writable``. A schedule
    point every :data:`YIELD_EVERY` reads that found data keeps the connections fair.

Both listen on 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import errno
import socket
from typing import Final

import msgpack
import trio

from agentrpc.protocol.constants import (
    ERR_DUPLICATE_HANDSHAKE,
    ERR_HANDSHAKE_REQUIRED,
    ERR_UNSUPPORTED_COMMAND,
    ERR_UNSUPPORTED_VERSION,
    HANDSHAKE,
    RPC_VERSION,
    STOP,
)
from agentrpc.protocol.msgpack_wire import READ_SIZE

HOST: Final = "127.0.0.1"
MAX_BUFFER: Final = 1 << 20
"""Bytes of undecoded input one connection may hold (one frame larger than this closes it)."""
YIELD_EVERY: Final = 64
"""The raw server's schedule point: after this many reads in a row that found data."""
BACKLOG: Final = 1024

_pack = msgpack.Packer(use_bin_type=True).pack
OK_PREFIX: Final = b"\x82" + _pack("Error") + _pack("") + _pack("Seq")
"""A reply header without error, ``{Error: "", Seq: ...}``, up to its Seq."""


class BadFrame(Exception):
    """A frame that decodes as msgpack but is not a request header."""


class Session:
    """One connection's protocol state: bytes in, reply bytes and a close flag out."""

    __slots__ = ("_handshaken", "_pending", "_unpacker")

    def __init__(self) -> None:
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_BUFFER)
        self._handshaken = False
        self._pending: tuple[str, int] | None = None  # a header whose body is still to come

    def receive(self, data: bytes | bytearray | memoryview) -> tuple[bytearray, bool]:
        """Feed received bytes; returns the replies to send and whether to close after them.

        Raises ``ValueError``, ``msgpack.UnpackException`` or :class:`BadFrame` for input
        that is not the protocol.
        """
        unpacker = self._unpacker
        unpacker.feed(data)
        out = bytearray()
        pack = _pack
        for obj in unpacker:
            pending = self._pending
            if pending is not None:  # obj is the body of that header
                self._pending = None
                pending_command, pending_seq = pending
                if pending_command == STOP:
                    out += OK_PREFIX
                    out += pack(pending_seq)
                elif type(obj) is not dict or obj.get("Version") != RPC_VERSION:
                    out += pack({"Error": ERR_UNSUPPORTED_VERSION, "Seq": pending_seq})
                elif self._handshaken:
                    out += pack({"Error": ERR_DUPLICATE_HANDSHAKE, "Seq": pending_seq})
                else:
                    self._handshaken = True
                    out += OK_PREFIX
                    out += pack(pending_seq)
                continue
            if type(obj) is not dict:
                raise BadFrame("a request header must be a map")
            command = obj.get("Command")
            seq = obj.get("Seq")
            if type(command) is not str or type(seq) is not int or seq < 0:
                raise BadFrame("a request header needs Command and Seq")
            if not self._handshaken and command != HANDSHAKE:
                out += pack({"Error": ERR_HANDSHAKE_REQUIRED, "Seq": seq})
                return out, True
            if command != STOP and command != HANDSHAKE:
                out += pack({"Error": ERR_UNSUPPORTED_COMMAND, "Seq": seq})
                return out, True
            self._pending = (command, seq)
        return out, False


ENDINGS: Final = (OSError, trio.BrokenResourceError, ValueError, msgpack.UnpackException, BadFrame)
"""How a connection ends early: the peer went away, or sent what is not the protocol. Only
that connection closes."""


# ----------------------------------------------------------------------------- (a) streams


async def stream_connection(stream: trio.SocketStream) -> None:
    """One connection of the streams server (``serve_tcp`` closes the stream after it)."""
    session = Session()
    try:
        while True:
            data = await stream.receive_some(READ_SIZE)
            if not data:
                return
            out, close = session.receive(data)
            if out:
                await stream.send_all(out)
            if close:
                return
    except ENDINGS:
        return


async def serve_streams(
    host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """The streams server; ``task_status.started`` gets the port it listens on."""
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=BACKLOG)
    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, stream_connection, listeners)
        task_status.started(bound)


# ----------------------------------------------------------------------------- (b) raw socket


async def send_all_raw(sock: socket.socket, data: bytearray) -> None:
    """Write all of ``data``: ``send`` first, wait for writability only when it is full."""
    view = memoryview(data)
    sent, total = 0, len(data)
    while True:
        try:  # noqa: SIM105 - the hot path: no context manager per send
            sent += sock.send(view[sent:])
        except BlockingIOError:
            pass
        if sent >= total:
            return
        await trio.lowlevel.wait_writable(sock)


async def raw_connection(sock: socket.socket) -> None:
    """One connection of the raw server: it owns ``sock`` and closes it."""
    session = Session()
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    recv_into = sock.recv_into
    wait_readable = trio.lowlevel.wait_readable
    streak = 0
    with sock:
        try:
            while True:
                try:
                    size = recv_into(buffer)
                except BlockingIOError:
                    streak = 0
                    await wait_readable(sock)
                    continue
                if not size:
                    return
                out, close = session.receive(view[:size])
                if out:
                    await send_all_raw(sock, out)
                if close:
                    return
                streak += 1
                if streak >= YIELD_EVERY:
                    streak = 0
                    await trio.lowlevel.checkpoint()
        except ENDINGS:
            return


ACCEPT_PAUSES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""accept() errors that mean "out of resources": wait a little and go on accepting."""


async def serve_raw(
    host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """The raw-socket server; ``task_status.started`` gets the port it listens on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(BACKLOG)
        listener.setblocking(False)
        async with trio.open_nursery() as nursery:
            task_status.started(listener.getsockname()[1])
            while True:
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(listener)
                    continue
                except OSError as exc:
                    if exc.errno not in ACCEPT_PAUSES:
                        raise
                    await trio.sleep(0.1)
                    continue
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(raw_connection, sock)


SERVERS: Final = {"streams": serve_streams, "raw": serve_raw}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bare_servers", description=__doc__)
    parser.add_argument("kind", choices=sorted(SERVERS))
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    trio.run(SERVERS[args.kind], args.host, args.port)


if __name__ == "__main__":
    main()
