"""Memberlist UDP packets: compound, CRC, compress and label framing, in and out.

Outbound a packet is built as: message(s) → compound → compress if smaller → CRC header →
encrypt → label header. Inbound it is taken apart in the reverse order: strip the label →
decrypt → verify the CRC → flatten compound and compress messages recursively into the leaf
messages, each a ``(type byte, body)`` pair.

Envelope failures (label mismatch, decryption, CRC) raise; problems inside the content (a
truncated compound, a corrupt compressed part, an unsupported type) are reported next to the
messages that could be read, because memberlist logs those and handles the rest.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from agentrpc.gossip import lzw
from agentrpc.gossip.messages import (
    LABEL_MAX_SIZE,
    MAX_DECOMPRESSED_BYTES,
    Compress,
    CompressionAlgo,
    GossipDecodeError,
    GossipEncodeError,
    MessageType,
    decode_body,
    encode_body,
)
from agentrpc.gossip.security import (
    EncryptionVersion,
    Keyring,
    decrypt_packet,
    encrypt_packet,
)

__all__ = [
    "COMPOUND_HEADER_OVERHEAD",
    "COMPOUND_MAX_PARTS",
    "COMPOUND_PART_OVERHEAD",
    "CRC_HEADER_SIZE",
    "MAX_NESTING",
    "PACKET_MESSAGE_TYPES",
    "CompoundParts",
    "CrcMismatchError",
    "InboundPacket",
    "LabelError",
    "add_crc",
    "add_label",
    "check_label",
    "compress_message",
    "decode_packet",
    "decompress_body",
    "encode_packet",
    "encode_packets",
    "label_overhead",
    "make_compound",
    "make_compounds",
    "split_compound",
    "strip_crc",
    "strip_label",
]

COMPOUND_MAX_PARTS = 255
"""A compound message counts its parts in one byte."""
COMPOUND_HEADER_OVERHEAD = 2
"""Type byte and part count, for packet budget calculations."""
COMPOUND_PART_OVERHEAD = 2
"""The u16 length each part adds."""
CRC_HEADER_SIZE = 5
"""``[12][crc32 BE]``."""
MAX_NESTING = 8
"""Deepest compound/compress nesting we unpack (memberlist has no limit; Go sends two)."""

PACKET_MESSAGE_TYPES = frozenset(
    {
        MessageType.PING,
        MessageType.INDIRECT_PING,
        MessageType.ACK_RESP,
        MessageType.NACK_RESP,
        MessageType.SUSPECT,
        MessageType.ALIVE,
        MessageType.DEAD,
        MessageType.USER,
    }
)
"""Leaf message types memberlist handles when they arrive in a packet."""

_U16 = struct.Struct(">H")
_CRC_HEADER = struct.Struct(">BI")


class LabelError(GossipDecodeError):
    """The label header is malformed, or the label is not the one expected."""


class CrcMismatchError(GossipDecodeError):
    """The packet's CRC header does not match its contents."""


# --------------------------------------------------------------------------------------------
# Compound messages.


def make_compound(messages: Sequence[bytes]) -> bytes:
    """``[7][n][n × u16 BE length][part]…`` for at most 255 parts of at most 65535 bytes."""
    if len(messages) > COMPOUND_MAX_PARTS:
        raise GossipEncodeError(
            f"a compound message holds at most {COMPOUND_MAX_PARTS} parts, got {len(messages)}"
        )
    out = bytearray((MessageType.COMPOUND, len(messages)))
    for part in messages:
        if len(part) > 0xFFFF:
            raise GossipEncodeError(f"compound part of {len(part)} bytes exceeds 65535")
        out += _U16.pack(len(part))
    for part in messages:
        out += part
    return bytes(out)


def make_compounds(messages: Sequence[bytes]) -> list[bytes]:
    """Pack any number of messages into compound messages of at most 255 parts each."""
    return [
        make_compound(messages[start : start + COMPOUND_MAX_PARTS])
        for start in range(0, len(messages), COMPOUND_MAX_PARTS)
    ]


@dataclass(frozen=True, slots=True)
class CompoundParts:
    """The parts of a compound message; ``truncated`` counts parts cut off by its end."""

    parts: tuple[bytes, ...]
    truncated: int


def split_compound(body: bytes) -> CompoundParts:
    """Split a compound message's body (the bytes after its type byte).

    Like memberlist, parts that the data ends before are dropped and counted in
    ``truncated``; a missing count byte or a cut-off length table raises.
    """
    if not body:
        raise GossipDecodeError("compound message is missing its length byte")
    count = body[0]
    table_end = 1 + 2 * count
    if len(body) < table_end:
        raise GossipDecodeError("compound message has a truncated length table")
    parts: list[bytes] = []
    offset = table_end
    for index in range(count):
        (length,) = _U16.unpack_from(body, 1 + 2 * index)
        end = offset + length
        if end > len(body):
            return CompoundParts(tuple(parts), count - index)
        parts.append(body[offset:end])
        offset = end
    return CompoundParts(tuple(parts), 0)


# --------------------------------------------------------------------------------------------
# CRC.


def add_crc(packet: bytes) -> bytes:
    """Prefix ``[12][crc32-IEEE BE]`` (sent only to peers with PMax >= 5)."""
    return _CRC_HEADER.pack(MessageType.HAS_CRC, zlib.crc32(packet)) + packet


def strip_crc(packet: bytes) -> tuple[bytes, bool]:
    """Verify and remove a CRC header if there is one; returns ``(rest, had_crc)``."""
    if not packet or packet[0] != MessageType.HAS_CRC:
        return packet, False
    if len(packet) < CRC_HEADER_SIZE:
        raise CrcMismatchError("packet is too short for its CRC header")
    _, expected = _CRC_HEADER.unpack_from(packet)
    rest = packet[CRC_HEADER_SIZE:]
    actual = zlib.crc32(rest)
    if actual != expected:
        raise CrcMismatchError(f"invalid checksum: got {actual:08x}, header says {expected:08x}")
    return rest, True


# --------------------------------------------------------------------------------------------
# Compression.


def compress_message(message: bytes) -> bytes:
    """``[9]`` + msgpack ``compress{Algo: 0, Buf: lzw(message)}``."""
    return _compressed(lzw.compress(message))


def _compressed(buf: bytes) -> bytes:
    body = encode_body(Compress(algo=CompressionAlgo.LZW, buf=buf))
    return bytes((MessageType.COMPRESS,)) + body


_COMPRESS_OVERHEAD: Final = len(_compressed(b""))
"""Bytes a compress message adds to its LZW data at the least (the type, the map, an empty
``Buf``); longer data only makes the header longer."""


def compress_if_smaller(message: bytes) -> bytes | None:
    """:func:`compress_message` when it is shorter than ``message``, else None; the LZW
    stops as soon as it cannot be (most pings and acks)."""
    buf = lzw.compress(message, give_up_at=len(message) - _COMPRESS_OVERHEAD)
    if buf is None:
        return None
    compressed = _compressed(buf)
    return compressed if len(compressed) < len(message) else None


def decompress_body(body: bytes, *, max_size: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """Decode a compress message's body (after its type byte) and return the inner message."""
    envelope = decode_body(Compress, body)
    return _decompress(envelope, max_size)


def _decompress(envelope: Compress, max_size: int) -> bytes:
    if envelope.algo != CompressionAlgo.LZW:
        raise GossipDecodeError(f"cannot decompress unknown algorithm {envelope.algo}")
    return lzw.decompress(envelope.buf, max_size)


# --------------------------------------------------------------------------------------------
# Label.


def add_label(packet: bytes, label: bytes) -> bytes:
    """Prefix ``[244][len][label]``; an empty label adds nothing."""
    return _label_header(label) + packet


def _label_header(label: bytes) -> bytes:
    if not label:
        return b""
    if len(label) > LABEL_MAX_SIZE:
        raise GossipEncodeError(f"label of {len(label)} bytes exceeds {LABEL_MAX_SIZE}")
    return bytes((MessageType.HAS_LABEL, len(label))) + label


def label_overhead(label: bytes) -> int:
    """Bytes the label header adds to every packet."""
    return 2 + len(label) if label else 0


def strip_label(packet: bytes) -> tuple[bytes, bytes]:
    """Remove a label header if there is one; returns ``(label, rest)``."""
    if not packet or packet[0] != MessageType.HAS_LABEL:
        return b"", packet
    if len(packet) < 2:
        raise LabelError("cannot decode label; packet has been truncated")
    size = packet[1]
    if size < 1:
        raise LabelError("label header cannot be empty when present")
    if len(packet) < 2 + size:
        raise LabelError("cannot decode label; packet has been truncated")
    return bytes(packet[2 : 2 + size]), packet[2 + size :]


def check_label(received: bytes, expected: bytes) -> None:
    """Raise :class:`LabelError` unless the received label is the configured one."""
    if received != expected:
        raise LabelError(f"unacceptable label {received!r} (expected {expected!r})")


# --------------------------------------------------------------------------------------------
# Whole packets.


@dataclass(frozen=True, slots=True)
class InboundPacket:
    """What a UDP packet contained.

    ``messages`` are the leaf messages in order, each ``(type byte, body)``; ``body`` is the
    msgpack struct (or, for type 8, the user message handed to the delegate). ``truncated``
    counts compound parts lost to a short packet; ``problems`` describes parts that could not
    be unpacked at all.
    """

    messages: tuple[tuple[int, bytes], ...]
    truncated: int = 0
    problems: tuple[str, ...] = ()
    label: bytes = b""
    had_crc: bool = False
    encrypted: bool = False


def decode_packet(
    packet: bytes,
    *,
    label: bytes = b"",
    keyring: Keyring | None = None,
    verify_incoming: bool = True,
    max_decompressed: int = MAX_DECOMPRESSED_BYTES,
) -> InboundPacket:
    """Take one received UDP packet apart.

    With a ``keyring`` the packet must decrypt, unless ``verify_incoming`` is false (rolling
    key introduction), in which case an undecryptable packet is read as plaintext.
    """
    received_label, rest = strip_label(packet)
    check_label(received_label, label)
    encrypted = False
    if keyring is not None:
        try:
            rest = decrypt_packet(keyring, rest, label=received_label)
            encrypted = True
        except GossipDecodeError:
            if verify_incoming:
                raise
    rest, had_crc = strip_crc(rest)
    messages: list[tuple[int, bytes]] = []
    problems: list[str] = []
    truncated = _flatten(rest, 0, max_decompressed, messages, problems)
    return InboundPacket(
        messages=tuple(messages),
        truncated=truncated,
        problems=tuple(problems),
        label=received_label,
        had_crc=had_crc,
        encrypted=encrypted,
    )


def _flatten(
    message: bytes,
    depth: int,
    max_decompressed: int,
    messages: list[tuple[int, bytes]],
    problems: list[str],
) -> int:
    """Append the leaf messages inside ``message``; return the truncated-part count."""
    if not message:
        problems.append("missing message type byte")
        return 0
    msg_type = message[0]
    body = message[1:]
    if msg_type in PACKET_MESSAGE_TYPES:
        messages.append((msg_type, body))
        return 0
    if msg_type not in (MessageType.COMPOUND, MessageType.COMPRESS):
        problems.append(f"message type {msg_type} not supported in a packet")
        return 0
    if depth >= MAX_NESTING:
        problems.append(f"compound/compress nesting deeper than {MAX_NESTING}")
        return 0
    if msg_type == MessageType.COMPRESS:
        try:
            inner = decompress_body(body, max_size=max_decompressed)
        except GossipDecodeError as exc:
            problems.append(f"failed to decompress payload: {exc}")
            return 0
        return _flatten(inner, depth + 1, max_decompressed, messages, problems)
    try:
        compound = split_compound(body)
    except GossipDecodeError as exc:
        problems.append(f"failed to decode compound message: {exc}")
        return 0
    truncated = compound.truncated
    for part in compound.parts:
        truncated += _flatten(part, depth + 1, max_decompressed, messages, problems)
    return truncated


def encode_packet(
    message: bytes,
    *,
    compress: bool = True,
    crc: bool = False,
    keyring: Keyring | None = None,
    encryption_version: int = EncryptionVersion.UNPADDED,
    label: bytes = b"",
) -> bytes:
    """Wrap one message (possibly already a compound) for sending as a UDP packet.

    Compression is used only when it makes the packet smaller, as memberlist does; the CRC
    header is added when ``crc`` is true (the peer's PMax is at least 5).
    """
    payload = message
    if compress:
        payload = compress_if_smaller(message) or message
    if crc:
        payload = add_crc(payload)
    if keyring is not None:
        payload = encrypt_packet(keyring, payload, label=label, version=encryption_version)
    return add_label(payload, label)


def encode_packets(
    messages: Iterable[bytes],
    *,
    compress: bool = True,
    crc: bool = False,
    keyring: Keyring | None = None,
    encryption_version: int = EncryptionVersion.UNPADDED,
    label: bytes = b"",
) -> list[bytes]:
    """Build the packets for a batch: one message goes alone, more go in compounds of ≤255.

    The caller is responsible for the UDP size budget (see :data:`COMPOUND_HEADER_OVERHEAD`,
    :data:`COMPOUND_PART_OVERHEAD`, :func:`label_overhead` and
    :func:`agentrpc.gossip.security.encrypt_overhead`).
    """
    batch = list(messages)
    if not batch:
        return []
    payloads = batch if len(batch) == 1 else make_compounds(batch)
    return [
        encode_packet(
            payload,
            compress=compress,
            crc=crc,
            keyring=keyring,
            encryption_version=encryption_version,
            label=label,
        )
        for payload in payloads
    ]
