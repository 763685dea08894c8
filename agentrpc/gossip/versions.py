"""What memberlist's version numbers mean, each fact named once (pure, no I/O, no trio).

A node advertises six versions in its alive messages and push/pull states, ``(pmin, pmax,
pcur, dmin, dmax, dcur)``: the memberlist protocol versions it understands and speaks, then the
delegate's (Serf's). What a peer may be sent depends on the highest protocol version it
understands (``pmax``); what we accept from it depends on the version we follow ourselves
(``MemberlistConfig.protocol_version``). The engine asks the functions here instead of
comparing numbers, so that every rule reads as what it means:

* :func:`understands_tcp_ping` (``pmax >= 3``): the peer answers a ping over TCP, so a probe
  may fall back to one;
* :func:`sends_nacks` (``pmax >= 4``): the peer answers an indirect ping it could not complete
  with a nack, so a missing nack counts against our own health;
* :func:`accepts_crc` (``pmax >= 5``): the peer checks a CRC on UDP packets, so ours carry one;
* :func:`announced_port`: before protocol 2 nodes announced no port, and port 0 means none was
  given; either way the peer listens on the port we are bound to (hashicorp/memberlist masks
  the old behaviour with its own bind port in the same three places: alive messages, push/pull
  states and indirect ping targets).

:data:`DEFAULT_VSN` is what we advertise unless configured otherwise, and :func:`check_vsn` the
shape every advertised version tuple must have.

Resources: none. Errors: :func:`check_vsn` raises ``ValueError`` for a malformed tuple; the
other functions never raise.
"""

from __future__ import annotations

from typing import Final

from agentrpc.gossip.messages import Vsn

__all__ = [
    "CRC_PROTOCOL",
    "DEFAULT_VSN",
    "NACK_PROTOCOL",
    "PORT_PROTOCOL",
    "TCP_PING_PROTOCOL",
    "accepts_crc",
    "announced_port",
    "check_vsn",
    "sends_nacks",
    "understands_tcp_ping",
]

DEFAULT_VSN: Final[Vsn] = (1, 5, 2, 2, 5, 4)
"""Advertised versions: memberlist 1-5 speaking 2, delegate (serf) 2-5 speaking 4, which
both a serf agent (delegate 5) and Consul 0.7-era pools (delegate max 4) accept."""

PORT_PROTOCOL: Final = 2
"""The first protocol version whose messages carry a port."""
TCP_PING_PROTOCOL: Final = 3
"""The first protocol version that answers pings over TCP."""
NACK_PROTOCOL: Final = 4
"""The first protocol version that sends nacks for failed indirect pings."""
CRC_PROTOCOL: Final = 5
"""The first protocol version that checks a CRC on UDP packets."""

_PMAX: Final = 1
"""Where in a :data:`~agentrpc.gossip.messages.Vsn` the highest protocol understood is."""


def understands_tcp_ping(vsn: Vsn) -> bool:
    """Whether a node with versions ``vsn`` answers a fallback ping over TCP."""
    return vsn[_PMAX] >= TCP_PING_PROTOCOL


def sends_nacks(vsn: Vsn) -> bool:
    """Whether a node with versions ``vsn`` sends a nack when an indirect ping fails."""
    return vsn[_PMAX] >= NACK_PROTOCOL


def accepts_crc(vsn: Vsn) -> bool:
    """Whether UDP packets to a node with versions ``vsn`` may (and so do) carry a CRC."""
    return vsn[_PMAX] >= CRC_PROTOCOL


def announced_port(port: int, protocol_version: int, bound_port: int) -> int:
    """The port a peer announced, or ``bound_port`` (ours) where none can have been: at
    ``protocol_version`` below 2, or when the announced port is 0."""
    if port == 0 or protocol_version < PORT_PROTOCOL:
        return bound_port
    return port


def check_vsn(vsn: Vsn) -> None:
    """Raise ``ValueError`` unless ``vsn`` is six uint8 versions with min <= cur <= max for
    both the protocol (whose min is positive) and the delegate."""
    if len(vsn) != 6 or not all(0 <= v <= 0xFF for v in vsn):
        raise ValueError(f"vsn must be six uint8 versions, got {vsn!r}")
    pmin, pmax, pcur, dmin, dmax, dcur = vsn
    if not (0 < pmin <= pcur <= pmax and dmin <= dcur <= dmax):
        raise ValueError(f"vsn {vsn!r} is not min <= cur <= max")
