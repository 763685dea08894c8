"""Memberlist TCP streams: an incremental reader and an encoder, without I/O.

A stream carries messages with no framing beyond the type byte, msgpack values and raw bytes
whose lengths a preceding header gives, so the reader parses incrementally: feed it bytes as
they arrive and pull complete messages. It handles the optional label header at the start of
the stream, the encrypted envelope (type 10), compression (type 9), and the kinds that travel
over TCP: push/pull (``[6] header nodeState×N userState``), fallback ping ``[0]``, ack ``[2]``,
user message ``[8]{UserMsgLen} + raw`` and error ``[13]``. It enforces memberlist's limits,
and ``max_nodes`` (the engine passes its node-table bound): a push/pull whose header declares
more nodes is refused as soon as the header is read, before any node state is decoded.

The encoder builds each outbound stream message and wraps it as Go does: always compressed
when compression is enabled, then encrypted when a keyring is given.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from agentrpc.gossip.messages import (
    MAX_DECOMPRESSED_BYTES,
    MAX_PUSH_STATE_BYTES,
    MAX_PUSH_STATE_NODES,
    MAX_USER_MSG_BYTES,
    AckResp,
    ErrResp,
    GossipDecodeError,
    GossipEncodeError,
    MessageType,
    Ping,
    PushNodeState,
    PushPullHeader,
    UserMsgHeader,
    decode_body,
    encode_body,
    encode_message,
)
from agentrpc.gossip.packet import (
    LabelError,
    add_label,
    check_label,
    compress_message,
    decompress_body,
)
from agentrpc.gossip.security import (
    STREAM_ENVELOPE_HEADER_SIZE,
    EncryptionVersion,
    Keyring,
    decrypt_stream_message,
    encrypt_stream_message,
    encrypted_length,
    stream_envelope_length,
)

__all__ = [
    "PushPull",
    "StreamEncoder",
    "StreamLimitError",
    "StreamMessage",
    "StreamReader",
    "StreamTruncatedError",
    "StreamUserMessage",
]


class StreamLimitError(GossipDecodeError):
    """The peer announced or sent more than memberlist's limits allow."""


class StreamTruncatedError(GossipDecodeError):
    """The stream (or a decrypted/decompressed message) ended in the middle of a message."""


@dataclass(frozen=True, slots=True)
class PushPull:
    """A push/pull state exchange: the sender's node states and its delegate's user state."""

    join: bool
    nodes: tuple[PushNodeState, ...]
    user_state: bytes = b""


@dataclass(frozen=True, slots=True)
class StreamUserMessage:
    """A user message sent over a stream (memberlist hands ``payload`` to the delegate)."""

    payload: bytes


StreamMessage = PushPull | Ping | AckResp | ErrResp | StreamUserMessage
"""Everything a stream can deliver."""


# --------------------------------------------------------------------------------------------
# Finding where a msgpack value ends without decoding it.

_FIXED_SIZE: dict[int, int] = {
    0xC0: 1,  # nil
    0xC2: 1,  # false
    0xC3: 1,  # true
    0xCA: 5,  # float32
    0xCB: 9,  # float64
    0xCC: 2,  # uint8
    0xCD: 3,
    0xCE: 5,
    0xCF: 9,
    0xD0: 2,  # int8
    0xD1: 3,
    0xD2: 5,
    0xD3: 9,
    0xD4: 3,  # fixext 1
    0xD5: 4,
    0xD6: 6,
    0xD7: 10,
    0xD8: 18,
}
# first byte -> (bytes in the length field, extra header bytes after it, 1 for raw/ext data)
_SIZED_RAW: dict[int, tuple[int, int]] = {
    0xC4: (1, 0),  # bin8
    0xC5: (2, 0),
    0xC6: (4, 0),
    0xC7: (1, 1),  # ext8 (type byte after length)
    0xC8: (2, 1),
    0xC9: (4, 1),
    0xD9: (1, 0),  # str8
    0xDA: (2, 0),
    0xDB: (4, 0),
}
# first byte -> (bytes in the count field, values per counted element)
_SIZED_CONTAINER: dict[int, tuple[int, int]] = {
    0xDC: (2, 1),  # array16
    0xDD: (4, 1),
    0xDE: (2, 2),  # map16
    0xDF: (4, 2),
}


def _msgpack_end(data: bytearray, pos: int, max_size: int, what: str) -> tuple[bool, int]:
    """Locate the end of the msgpack value starting at ``pos``.

    Returns ``(True, end)`` when the value is complete in ``data``, otherwise ``(False, need)``
    where ``need`` is a lower bound on the buffer length required. Raises
    :class:`StreamLimitError` once the value is known to exceed ``max_size`` bytes.
    """
    start = pos
    limit = start + max_size
    available = len(data)
    pending = 1
    while pending:
        if pos + pending > limit:
            raise StreamLimitError(f"{what} is larger than the limit ({max_size} bytes)")
        if pos >= available:
            return False, pos + pending
        first = data[pos]
        pending -= 1
        if first <= 0x7F or first >= 0xE0:
            pos += 1
        elif first <= 0x8F:
            pending += 2 * (first & 0x0F)
            pos += 1
        elif first <= 0x9F:
            pending += first & 0x0F
            pos += 1
        elif first <= 0xBF:
            pos += 1 + (first & 0x1F)
        elif first in _FIXED_SIZE:
            pos += _FIXED_SIZE[first]
        elif first in _SIZED_RAW:
            width, extra = _SIZED_RAW[first]
            if pos + 1 + width > available:
                return False, pos + 1 + width
            length = int.from_bytes(data[pos + 1 : pos + 1 + width], "big")
            pos += 1 + width + extra + length
        elif first in _SIZED_CONTAINER:
            width, per_element = _SIZED_CONTAINER[first]
            if pos + 1 + width > available:
                return False, pos + 1 + width
            count = int.from_bytes(data[pos + 1 : pos + 1 + width], "big")
            pending += per_element * count
            pos += 1 + width
        else:
            raise GossipDecodeError(f"{what}: invalid msgpack type byte 0x{first:02x}")
    if pos > limit:
        raise StreamLimitError(f"{what} is larger than the limit ({max_size} bytes)")
    if pos > available:
        return False, pos
    return True, pos


# --------------------------------------------------------------------------------------------
# Parsing one plain (not encrypted, not compressed) message.


@dataclass(frozen=True, slots=True)
class _Limits:
    state_bytes: int
    nodes: int
    user_msg_bytes: int
    message_bytes: int


_StructT = TypeVar("_StructT", PushPullHeader, UserMsgHeader, PushNodeState)


class _Buffer:
    """Bytes being parsed and the read position; ``need`` is set when more are required."""

    __slots__ = ("data", "need", "pos")

    def __init__(self, data: bytearray, pos: int = 0) -> None:
        self.data = data
        self.pos = pos
        self.need = 0


class _PlainParser:
    """Resumable parser for the body of one plain stream message (after its type byte)."""

    __slots__ = (
        "_body_start",
        "_limits",
        "_msg_type",
        "_nodes",
        "_push_pull_header",
        "_user_msg_header",
    )

    def __init__(self, msg_type: int, body_start: int, limits: _Limits) -> None:
        if msg_type not in _PLAIN_STREAM_TYPES:
            raise GossipDecodeError(f"received invalid message type ({msg_type}) on a stream")
        self._msg_type = msg_type
        self._body_start = body_start
        self._limits = limits
        self._push_pull_header: PushPullHeader | None = None
        self._user_msg_header: UserMsgHeader | None = None
        self._nodes: list[PushNodeState] = []

    def rebase(self, shift: int) -> None:
        """The buffer dropped ``shift`` bytes in front of this message."""
        self._body_start -= shift

    def step(self, buf: _Buffer) -> StreamMessage | None:
        """Parse as far as the buffer allows; None (with ``buf.need`` set) if incomplete."""
        msg_type = self._msg_type
        if msg_type == MessageType.PUSH_PULL:
            return self._step_push_pull(buf)
        if msg_type == MessageType.USER:
            return self._step_user(buf)
        end = self._object_end(buf, "stream message")
        if end < 0:
            return None
        body = memoryview(buf.data)[buf.pos : end]
        try:
            if msg_type == MessageType.PING:
                message: StreamMessage = decode_body(Ping, body)
            elif msg_type == MessageType.ACK_RESP:
                message = decode_body(AckResp, body)
            else:
                message = decode_body(ErrResp, body)
        finally:
            body.release()
        buf.pos = end
        return message

    def _object_end(self, buf: _Buffer, what: str) -> int:
        budget = self._limits.message_bytes - (buf.pos - self._body_start)
        complete, offset = _msgpack_end(buf.data, buf.pos, budget, what)
        if not complete:
            buf.need = offset
            return -1
        return offset

    def _decode_next(self, buf: _Buffer, cls: type[_StructT], what: str) -> _StructT | None:
        end = self._object_end(buf, what)
        if end < 0:
            return None
        body = memoryview(buf.data)[buf.pos : end]
        try:
            value = decode_body(cls, body)
        finally:
            body.release()
        buf.pos = end
        return value

    def _take_raw(self, buf: _Buffer, length: int) -> bytes | None:
        """``length`` raw bytes (``b""`` for none), or None until they have all arrived."""
        if not length:
            return b""
        end = buf.pos + length
        if end - self._body_start > self._limits.message_bytes:
            raise StreamLimitError(
                f"stream message is larger than the limit ({self._limits.message_bytes} bytes)"
            )
        if end > len(buf.data):
            buf.need = end
            return None
        raw = bytes(buf.data[buf.pos : end])
        buf.pos = end
        return raw

    def _step_push_pull(self, buf: _Buffer) -> StreamMessage | None:
        header = self._push_pull_header
        if header is None:
            header = self._decode_next(buf, PushPullHeader, "push/pull header")
            if header is None:
                return None
            if header.nodes < 0 or header.nodes > self._limits.nodes:
                raise StreamLimitError(
                    f"number of nodes in header ({header.nodes}) exceeds limit "
                    f"({self._limits.nodes})"
                )
            if header.user_state_len < 0 or header.user_state_len > self._limits.state_bytes:
                raise StreamLimitError(f"user state length ({header.user_state_len}) exceeds limit")
            self._push_pull_header = header
        nodes = self._nodes
        while len(nodes) < header.nodes:
            node = self._decode_next(buf, PushNodeState, "push node state")
            if node is None:
                return None
            nodes.append(node)
        user_state = self._take_raw(buf, header.user_state_len)
        if user_state is None:
            return None
        return PushPull(join=header.join, nodes=tuple(nodes), user_state=user_state)

    def _step_user(self, buf: _Buffer) -> StreamMessage | None:
        header = self._user_msg_header
        if header is None:
            header = self._decode_next(buf, UserMsgHeader, "user message header")
            if header is None:
                return None
            if header.user_msg_len < 0 or header.user_msg_len > self._limits.user_msg_bytes:
                raise StreamLimitError(f"user message length ({header.user_msg_len}) exceeds limit")
            self._user_msg_header = header
        payload = self._take_raw(buf, header.user_msg_len)
        if payload is None:
            return None
        return StreamUserMessage(payload)


_PLAIN_STREAM_TYPES = frozenset(
    {
        MessageType.PUSH_PULL,
        MessageType.PING,
        MessageType.ACK_RESP,
        MessageType.ERR,
        MessageType.USER,
    }
)


# --------------------------------------------------------------------------------------------
# The reader.

_COMPACT_THRESHOLD = 1 << 16


class StreamReader:
    """Incremental reader for the messages one memberlist stream carries.

    ``label`` is the configured label: the stream must start with exactly that label header
    (or none, when it is empty). With a ``keyring``, messages must arrive encrypted unless
    ``verify_incoming`` is false. Any error is final: the connection should be closed (a
    server may first send :meth:`StreamEncoder.err`).
    """

    def __init__(
        self,
        *,
        label: bytes = b"",
        keyring: Keyring | None = None,
        verify_incoming: bool = True,
        max_state_bytes: int = MAX_PUSH_STATE_BYTES,
        max_nodes: int = MAX_PUSH_STATE_NODES,
        max_user_msg_bytes: int = MAX_USER_MSG_BYTES,
        max_decompressed: int = MAX_DECOMPRESSED_BYTES,
    ) -> None:
        self._expected_label = bytes(label)
        self._keyring = keyring
        self._verify_incoming = verify_incoming
        self._limits = _Limits(
            state_bytes=max_state_bytes,
            nodes=max_nodes,
            user_msg_bytes=max_user_msg_bytes,
            message_bytes=max_decompressed,
        )
        self._max_encrypted = max_state_bytes
        self._max_decompressed = max_decompressed
        self._buf = _Buffer(bytearray())
        self._label_seen: bytes | None = None
        self._parser: _PlainParser | None = None
        self._eof = False
        self._error: GossipDecodeError | None = None

    @property
    def label(self) -> bytes | None:
        """The label the stream started with (``b""`` for none), once known."""
        return self._label_seen

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed by a complete message."""
        return len(self._buf.data) - self._buf.pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes."""
        if self._eof:
            raise RuntimeError("feed() after feed_eof()")
        self._buf.data += data

    def feed_eof(self) -> None:
        """The peer closed its sending side; nothing more will be fed."""
        self._eof = True

    def next_message(self) -> StreamMessage | None:
        """The next complete message, or None if more bytes are needed (or the stream ended
        cleanly between messages). Raises :class:`GossipDecodeError` on bad data and
        :class:`StreamTruncatedError` if the stream ended in the middle of a message."""
        if self._error is not None:
            raise self._error
        try:
            message = self._next()
        except GossipDecodeError as exc:
            self._error = exc
            raise
        if message is None and self._eof and self.buffered:
            self._error = StreamTruncatedError(
                f"stream ended in the middle of a message ({self.buffered} bytes left)"
            )
            raise self._error
        return message

    def _compact(self) -> None:
        buf = self._buf
        if buf.pos and (buf.pos == len(buf.data) or buf.pos >= _COMPACT_THRESHOLD):
            shift = buf.pos
            del buf.data[:shift]
            buf.pos = 0
            buf.need = max(0, buf.need - shift)
            if self._parser is not None:
                self._parser.rebase(shift)

    def _next(self) -> StreamMessage | None:
        buf = self._buf
        if len(buf.data) < buf.need:
            return None
        buf.need = 0
        self._compact()
        data = buf.data
        if self._label_seen is None and not self._read_label():
            return None
        if self._parser is None:
            if buf.pos >= len(data):
                return None
            msg_type = data[buf.pos]
            if msg_type == MessageType.ENCRYPT:
                return self._read_encrypted()
            if self._keyring is not None and self._verify_incoming:
                raise GossipDecodeError(
                    "encryption is configured but remote state is not encrypted"
                )
            if msg_type == MessageType.COMPRESS:
                return self._read_compressed()
            self._parser = _PlainParser(msg_type, buf.pos + 1, self._limits)
            buf.pos += 1
        message = self._parser.step(buf)
        if message is not None:
            self._parser = None
        return message

    def _read_label(self) -> bool:
        buf = self._buf
        data = buf.data
        if buf.pos >= len(data):
            return False
        if data[buf.pos] != MessageType.HAS_LABEL:
            label = b""
        else:
            if buf.pos + 2 > len(data):
                buf.need = buf.pos + 2
                return False
            size = data[buf.pos + 1]
            if size < 1:
                raise LabelError("label header cannot be empty when present")
            if buf.pos + 2 + size > len(data):
                buf.need = buf.pos + 2 + size
                return False
            label = bytes(data[buf.pos + 2 : buf.pos + 2 + size])
            buf.pos += 2 + size
        check_label(label, self._expected_label)
        self._label_seen = label
        return True

    def _read_encrypted(self) -> StreamMessage | None:
        buf = self._buf
        if self._keyring is None:
            raise GossipDecodeError("remote state is encrypted and encryption is not configured")
        header_end = buf.pos + STREAM_ENVELOPE_HEADER_SIZE
        if header_end > len(buf.data):
            buf.need = header_end
            return None
        length = stream_envelope_length(
            bytes(buf.data[buf.pos : header_end]), max_length=self._max_encrypted
        )
        end = header_end + length
        if end > len(buf.data):
            buf.need = end
            return None
        envelope = bytes(buf.data[buf.pos : end])
        buf.pos = end
        plain = decrypt_stream_message(
            self._keyring,
            envelope,
            label=self._label_seen or b"",
            max_length=self._max_encrypted,
        )
        return self._parse_whole(plain, allow_compressed=True)

    def _read_compressed(self) -> StreamMessage | None:
        buf = self._buf
        complete, offset = _msgpack_end(
            buf.data, buf.pos + 1, self._max_decompressed, "compressed stream message"
        )
        if not complete:
            buf.need = offset
            return None
        body = bytes(buf.data[buf.pos + 1 : offset])
        buf.pos = offset
        return self._parse_whole(
            decompress_body(body, max_size=self._max_decompressed), allow_compressed=False
        )

    def _parse_whole(self, message: bytes, *, allow_compressed: bool) -> StreamMessage:
        """Parse a complete message recovered from an envelope; trailing bytes are ignored."""
        if not message:
            raise GossipDecodeError("decrypted or decompressed stream message is empty")
        if message[0] == MessageType.COMPRESS and allow_compressed:
            inner = decompress_body(message[1:], max_size=self._max_decompressed)
            return self._parse_whole(inner, allow_compressed=False)
        parser = _PlainParser(message[0], 1, self._limits)
        inner_buf = _Buffer(bytearray(message), 1)
        result = parser.step(inner_buf)
        if result is None:
            raise StreamTruncatedError("stream message is truncated inside its envelope")
        return result


# --------------------------------------------------------------------------------------------
# The encoder.

_TYPE_BYTE = struct.Struct("B")


class StreamEncoder:
    """Builds outbound stream messages, wrapped as memberlist does.

    Every message is compressed when ``compress`` is true (Go compresses every stream message
    when compression is enabled, even if that makes it larger), then encrypted with the
    keyring's primary key when a ``keyring`` is given; ``label`` is authenticated with it.
    """

    def __init__(
        self,
        *,
        compress: bool = True,
        keyring: Keyring | None = None,
        encryption_version: int = EncryptionVersion.UNPADDED,
        label: bytes = b"",
    ) -> None:
        self._compress = compress
        self._keyring = keyring
        self._encryption_version = encryption_version
        self._label = bytes(label)

    def preamble(self) -> bytes:
        """The label header the dialing side writes first on a new stream (may be empty)."""
        return add_label(b"", self._label)

    def wrap(self, message: bytes) -> bytes:
        """Compress and/or encrypt one complete plain stream message."""
        out = compress_message(message) if self._compress else message
        if self._keyring is not None:
            if encrypted_length(self._encryption_version, len(out)) > MAX_PUSH_STATE_BYTES:
                raise GossipEncodeError("encrypted stream message would exceed the peer's limit")
            out = encrypt_stream_message(
                self._keyring, out, label=self._label, version=self._encryption_version
            )
        return out

    def push_pull(
        self, nodes: Sequence[PushNodeState], user_state: bytes = b"", *, join: bool
    ) -> bytes:
        """``[6] pushPullHeader nodeState×N userState``: a join or anti-entropy exchange."""
        if len(nodes) > MAX_PUSH_STATE_NODES:
            raise GossipEncodeError(f"{len(nodes)} node states exceed the peer's limit")
        if len(user_state) > MAX_PUSH_STATE_BYTES:
            raise GossipEncodeError(f"user state of {len(user_state)} bytes exceeds the limit")
        header = PushPullHeader(nodes=len(nodes), user_state_len=len(user_state), join=join)
        parts = [_TYPE_BYTE.pack(MessageType.PUSH_PULL), encode_body(header)]
        parts.extend(encode_body(node) for node in nodes)
        parts.append(bytes(user_state))
        return self.wrap(b"".join(parts))

    def ping(self, ping: Ping) -> bytes:
        """A TCP fallback ping, answered by :meth:`ack`."""
        return self.wrap(encode_message(ping))

    def ack(self, ack: AckResp) -> bytes:
        """The ack answering a stream ping."""
        return self.wrap(encode_message(ack))

    def err(self, error: str) -> bytes:
        """``[13]{Error}``: what a server sends when it cannot read the request."""
        return self.wrap(encode_message(ErrResp(error)))

    def user_message(self, payload: bytes) -> bytes:
        """``[8]{UserMsgLen} + payload``: a reliable user message."""
        if len(payload) > MAX_USER_MSG_BYTES:
            raise GossipEncodeError(f"user message of {len(payload)} bytes exceeds the limit")
        header = encode_body(UserMsgHeader(user_msg_len=len(payload)))
        return self.wrap(_TYPE_BYTE.pack(MessageType.USER) + header + bytes(payload))
