"""Wire helpers for the load generator: pre-encoded requests and cheap reply counting.

Requests are encoded once, before any clock starts, into one contiguous buffer with an offset
table, so that sending N requests is a slice of that buffer. Replies are counted with a
streaming ``msgpack.Unpacker``: headers (``{Error, Seq}``) are decoded, because the Error must
be checked, and bodies are *skipped* (parsed by msgpack's C code without building Python
objects).
"""

from __future__ import annotations

import socket
from array import array
from dataclasses import dataclass
from typing import Any, Final

import msgpack

READ_SIZE: Final = 1 << 20
"""Every ``recv`` asks for up to 1 MiB."""

HANDSHAKE_SEQ: Final = 1
FIRST_SEQ: Final = 2


@dataclass(frozen=True, slots=True)
class WireCommand:
    """One benchmarked command as a given server spells it."""

    name: str
    body: Any
    reply_body: bool


# The benchmark's command names (keys) mapped to each server's wire command. Serf answers
# ``members`` where Consul's agent (and agentrpc) answer ``members-lan``.
COMMANDS: Final[dict[str, dict[str, WireCommand]]] = {
    "agentrpc": {
        "stop": WireCommand("stop", {"Stop": 0}, False),
        "members": WireCommand("members-lan", None, True),
        "stats": WireCommand("stats", None, True),
    },
    "serf": {
        "stop": WireCommand("stop", {"Stop": 0}, False),
        "members": WireCommand("members", None, True),
        "stats": WireCommand("stats", None, True),
    },
}
COMMANDS["baseline"] = COMMANDS["agentrpc"]
"""An older revision of agentrpc (``--baseline REV``) speaks what agentrpc speaks."""


def encode_request(command: str, seq: int, body: Any = None) -> bytes:
    """One request frame: header ``{Command, Seq, Token}`` and the optional body."""
    pack = msgpack.Packer(use_bin_type=True).pack
    frame: bytes = pack({"Command": command, "Seq": seq, "Token": ""})
    if body is not None:
        frame += pack(body)
    return frame


def encode_requests(command: str, body: Any, count: int) -> tuple[bytes, array[int]]:
    """``count`` requests with Seq ``FIRST_SEQ`` upwards, back to back, and their offsets.

    ``offsets[i]`` is where request ``i`` starts; ``offsets[count]`` is the total length. The
    header is built from a template (``{Command, Seq, Token}`` with only Seq varying), which
    gives exactly the bytes ``msgpack.packb`` would.
    """
    pack = msgpack.Packer(use_bin_type=True).pack
    head = b"\x83" + pack("Command") + pack(command) + pack("Seq")
    tail = pack("Token") + pack("") + (b"" if body is None else pack(body))
    assert head + pack(FIRST_SEQ) + tail == encode_request(command, FIRST_SEQ, body)
    parts = [head + pack(seq) + tail for seq in range(FIRST_SEQ, FIRST_SEQ + count)]
    offsets = array("Q", [0])
    total = 0
    for part in parts:
        total += len(part)
        offsets.append(total)
    return b"".join(parts), offsets


class ReplyCounter:
    """Counts whole replies in a byte stream (header, plus a body when ``reply_body``).

    Only headers become Python objects; a body is skipped. The state machine remembers
    whether a body is pending, because msgpack resumes a partial object in the mode it began.
    """

    __slots__ = ("_body_pending", "_unpacker", "errors", "first_error", "last_seq", "reply_body")

    def __init__(self, reply_body: bool) -> None:
        self.reply_body = reply_body
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=256 * READ_SIZE)
        self._body_pending = False
        self.errors = 0
        self.first_error = ""
        self.last_seq = 0

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Feed received bytes; returns how many replies they completed."""
        unpacker = self._unpacker
        unpacker.feed(data)
        count = 0
        header: Any = None
        if not self.reply_body:
            for header in unpacker:
                count += 1
                if header["Error"]:
                    self._error(header)
            if header is not None:
                self.last_seq = header["Seq"]
            return count
        unpack = unpacker.unpack
        skip = unpacker.skip
        out_of_data = msgpack.OutOfData
        body_pending = self._body_pending
        try:
            while True:
                if body_pending:
                    skip()
                    body_pending = False
                    count += 1
                header = unpack()
                if header["Error"]:
                    self._error(header)
                body_pending = True
                self.last_seq = header["Seq"]
        except out_of_data:
            pass
        self._body_pending = body_pending
        return count

    def _error(self, header: dict[str, Any]) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = str(header["Error"])


def recv_replies(sock: socket.socket, counter: ReplyCounter, want: int, buffer: bytearray) -> None:
    """Block until ``want`` more replies have arrived on a blocking socket."""
    view = memoryview(buffer)
    got = 0
    while got < want:
        size = sock.recv_into(buffer)
        if not size:
            raise ConnectionError("the server closed the connection")
        got += counter.feed(view[:size])


def handshake(sock: socket.socket) -> None:
    """Send ``handshake`` (Seq 1, Version 1) on a blocking socket and check its reply."""
    sock.sendall(encode_request("handshake", HANDSHAKE_SEQ, {"Version": 1}))
    counter = ReplyCounter(False)
    recv_replies(sock, counter, 1, bytearray(4096))
    if counter.errors:
        raise ConnectionError(f"handshake refused: {counter.first_error}")


def connect(host: str, port: int, timeout: float = 10.0) -> socket.socket:
    """A blocking TCP connection with Nagle off, handshaken."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    handshake(sock)
    return sock
