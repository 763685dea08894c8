"""DNS messages in and out of bytes (pure: no I/O, no trio); the wire format is dnspython's.

- :func:`decode_query` turns a datagram (or one TCP message) into a :class:`Query` to resolve,
  a :class:`Refusal` (a short error reply: FORMERR for a query without a question, NOTIMP for
  an opcode other than QUERY), or a :class:`Drop` (not answered at all: undecodable bytes,
  responses, signed queries we cannot verify). A refusal echoes at most the header and the
  first question, never more than the query's own size.
- :func:`render` writes a response within a byte limit, dropping whole records from the end
  of the answer section (and the additional records no remaining answer needs, as the
  reference's ``syncExtra``) until it fits; :func:`size_limit` is the limit a query allows.
- :class:`TCPFramer` splits a TCP byte stream into its 16-bit length-prefixed messages,
  holding at most one message and one read.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.renderer
import dns.rrset
from dns.renderer import ADDITIONAL, ANSWER, AUTHORITY

from .settings import CLASSIC_UDP_SIZE, MAX_TCP_MESSAGE

__all__ = [
    "HEADER_SIZE",
    "Drop",
    "Query",
    "Refusal",
    "Rendered",
    "TCPFramer",
    "Transport",
    "decode_query",
    "frame",
    "max_answers",
    "new_response",
    "render",
    "size_limit",
]

Transport = Literal["udp", "tcp"]
HEADER_SIZE: Final = 12
_QR: Final = 0x80  # in the third header byte


@dataclass(frozen=True, slots=True)
class Query:
    message: dns.message.Message


@dataclass(frozen=True, slots=True)
class Refusal:
    wire: bytes
    rcode: int


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str
    """``malformed``, ``response`` or ``signed`` (the stats key)."""
    detail: str


Decoded = Query | Refusal | Drop


def decode_query(data: bytes) -> Decoded:
    """What to do with one message from a client."""
    if len(data) < HEADER_SIZE:
        return Drop("malformed", f"{len(data)} bytes, shorter than a DNS header")
    if data[2] & _QR:
        return Drop("response", "a response, not a query")
    try:
        message = dns.message.from_wire(data)
    except dns.message.UnknownTSIGKey:
        return Drop("signed", "a TSIG-signed query (no keys are configured)")
    except (dns.exception.DNSException, ValueError, IndexError, UnicodeError) as exc:
        return Drop("malformed", f"{type(exc).__name__}: {exc}")
    opcode = message.opcode()
    if opcode != dns.opcode.QUERY:
        return Refusal(_error_reply(message, dns.rcode.NOTIMP), dns.rcode.NOTIMP)
    if not message.question:
        return Refusal(_error_reply(message, dns.rcode.FORMERR), dns.rcode.FORMERR)
    return Query(message)


def new_response(query: dns.message.Message, payload: int) -> dns.message.Message:
    """A reply to ``query`` as miekg's ``SetReply`` makes it: same ID and opcode, the first
    question only, RD and CD copied, authoritative; EDNS0 (advertising ``payload``) when the
    query used it."""
    response = dns.message.Message(id=query.id)
    response.flags = dns.flags.QR | dns.flags.AA | (query.flags & (dns.flags.RD | dns.flags.CD))
    response.set_opcode(query.opcode())
    response.question = list(query.question[:1])
    if query.edns >= 0:
        response.use_edns(0, 0, payload)
    return response


def _error_reply(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
    response = dns.message.Message(id=query.id)
    response.flags = dns.flags.QR | (query.flags & dns.flags.RD)
    response.set_opcode(query.opcode())
    response.set_rcode(rcode)
    response.question = list(query.question[:1])
    return response.to_wire(max_size=MAX_TCP_MESSAGE)


def size_limit(query: dns.message.Message, transport: Transport, max_udp_size: int) -> int:
    """Bytes a response may have: over TCP the 16-bit limit; over UDP 512, or the query's
    EDNS0 buffer size when larger, at most ``max_udp_size``."""
    if transport == "tcp":
        return MAX_TCP_MESSAGE
    if query.edns >= 0 and query.payload > CLASSIC_UDP_SIZE:
        return min(query.payload, max_udp_size)
    return CLASSIC_UDP_SIZE


@dataclass(frozen=True, slots=True)
class Rendered:
    wire: bytes
    answers_dropped: int
    """Answer records left out to fit the limit."""
    truncated: bool
    """The TC bit is set."""


OPT_SIZE: Final = 11
"""An OPT record without options: the root name and the fixed fields."""
MIN_RECORD_SIZE: Final = 14
"""The smallest answer record: a compressed owner name (2), the fixed fields (10) and a
2-byte rdata (a CNAME to a compressed name); no more than (limit - 12) / 14 answers fit."""


def max_answers(limit: int) -> int:
    """More answer records than this can never fit in ``limit`` bytes."""
    return max(0, (limit - HEADER_SIZE) // MIN_RECORD_SIZE)


class _Renderer:
    """dnspython's renderer, typed (its methods are not annotated)."""

    def __init__(self, message: dns.message.Message, limit: int) -> None:
        self._r = dns.renderer.Renderer(message.id, message.flags, limit)  # type: ignore[no-untyped-call]

    @property
    def room(self) -> int:
        r = self._r
        return int(r.max_size) - int(r.output.tell())

    def reserve(self, size: int) -> None:
        self._r.reserve(size)

    def unreserve(self, size: int) -> None:
        self._r.max_size += size
        self._r.reserved -= size

    def release(self) -> None:
        self._r.release_reserved()

    def question(self, rrset: dns.rrset.RRset) -> None:
        self._r.add_question(rrset.name, rrset.rdtype, rrset.rdclass)  # type: ignore[no-untyped-call]

    def add(self, section: int, rrset: dns.rrset.RRset) -> None:
        self._r.add_rrset(section, rrset, want_shuffle=False)  # type: ignore[no-untyped-call]

    def finish(self, message: dns.message.Message, truncated: bool) -> bytes:
        r = self._r
        if message.opt is not None:
            r.add_opt(message.opt)  # type: ignore[no-untyped-call]
        if truncated:
            r.flags |= dns.flags.TC
        r.write_header()  # type: ignore[no-untyped-call]
        return bytes(r.get_wire())  # type: ignore[no-untyped-call]


def _plain_size(rrset: dns.rrset.RRset) -> int:
    """The uncompressed size: what the record can take at most in any message."""
    out = io.BytesIO()
    rrset.to_wire(out)
    return out.tell()


def render(
    message: dns.message.Message,
    limit: int,
    *,
    needs: Callable[[dns.rrset.RRset], Sequence[dns.rrset.RRset]] | None = None,
    flag_trimmed: bool = True,
) -> Rendered:
    """``message`` in at most ``limit`` bytes.

    When it does not fit, answers are kept in order, in one pass, while each fits together
    with the additional records it ``needs`` (for an SRV, its target's address records; the
    additional section then holds just those); when ``needs`` is None the additional section
    is kept whole, like the authority section. ``flag_trimmed`` sets TC when answers were
    dropped (the reference sets it only with ``enable_truncate``). Should not even the
    question and the authority section fit, everything else goes and TC is set. The cost is
    bounded by ``limit``: rendering stops at the first record that does not fit."""
    try:
        wire = message.to_wire(max_size=limit, want_shuffle=False)
    except dns.exception.TooBig:
        pass
    else:
        if len(wire) <= limit:
            return Rendered(wire, 0, bool(message.flags & dns.flags.TC))
    opt = OPT_SIZE if message.opt is not None else 0
    fixed = list(message.authority)
    if needs is None:
        fixed += message.additional
    renderer = _Renderer(message, limit)
    try:
        renderer.reserve(opt + sum(_plain_size(rrset) for rrset in fixed))
        for rrset in message.question:
            renderer.question(rrset)
    except (ValueError, dns.exception.TooBig):
        renderer = _Renderer(message, limit)
        renderer.reserve(opt)
        for rrset in message.question[:1]:
            renderer.question(rrset)
        renderer.release()
        return Rendered(renderer.finish(message, True), len(message.answer), True)
    planned: list[dns.rrset.RRset] = []
    seen: set[int] = set()
    kept = 0
    for rrset in message.answer:
        extra = [e for e in (needs(rrset) if needs is not None else ()) if id(e) not in seen]
        size = sum(_plain_size(e) for e in extra)
        if size > renderer.room:
            break
        renderer.reserve(size)
        try:
            renderer.add(ANSWER, rrset)
        except dns.exception.TooBig:
            renderer.unreserve(size)
            break
        kept += 1
        planned += extra
        seen.update(id(e) for e in extra)
    renderer.release()
    renderer.reserve(opt)
    for rrset in message.authority:
        renderer.add(AUTHORITY, rrset)
    for rrset in planned if needs is not None else message.additional:
        renderer.add(ADDITIONAL, rrset)
    renderer.release()
    dropped = len(message.answer) - kept
    truncated = bool(message.flags & dns.flags.TC) or (dropped > 0 and flag_trimmed)
    return Rendered(renderer.finish(message, truncated), dropped, truncated)


class TCPFramer:
    """Messages of a DNS-over-TCP stream: a 16-bit big-endian length, then that many bytes.
    A zero length is a protocol error (:class:`ValueError`)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_message(self) -> bytes | None:
        """The next whole message, or None until more bytes are fed."""
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        size = int.from_bytes(buffer[:2], "big")
        if size == 0:
            raise ValueError("a zero-length DNS message")
        if len(buffer) < 2 + size:
            return None
        message = bytes(buffer[2 : 2 + size])
        del buffer[: 2 + size]
        return message

    def needed(self) -> int:
        """Bytes still missing before the next message is whole (at least 1)."""
        buffer = self._buffer
        if len(buffer) < 2:
            return 2 - len(buffer)
        return max(1, 2 + int.from_bytes(buffer[:2], "big") - len(buffer))


def frame(wire: bytes) -> bytes:
    """One message for TCP: its 16-bit length, then the message."""
    return len(wire).to_bytes(2, "big") + wire
