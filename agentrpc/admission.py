"""Who is on the other end of a connection, and whether one more connection is admitted.

- :func:`peer_of` names the peer of an accepted stream: a :class:`Peer` with a printable
  name (``10.0.0.5:52000``, ``[::1]:52000``, ``unix:/path``, ``in-process``) and the client IP,
  or ``None`` where there is none (unix sockets, memory streams). Every log line that names a
  peer, and every per-IP count, takes it from here.
- :class:`AdmissionCounter` counts the connections being served, in total and per client IP,
  and says why a new one is refused (:class:`Refusal`); both limits can change at run time
  (a config reload) and apply to the next connection. Connections without an IP count toward
  the total only. The agent RPC listener uses both limits; the server port uses the per-IP one.

Resources: none; no I/O (``peer_of`` only asks the stream's socket for its addresses, which
never blocks) and no trio at run time. Errors: an ``OSError`` from the socket means the peer
is gone already; it is named ``unknown``, never raised. Releasing an IP that was not admitted
is a bug and raises ``KeyError``.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, NamedTuple

from .hostport import join_host_port

if TYPE_CHECKING:
    import trio


class Peer(NamedTuple):
    """The printable name of a connection's peer, and its IP address (None without one)."""

    name: str
    ip: str | None


IN_PROCESS = Peer("in-process", None)
UNKNOWN = Peer("unknown", None)


def peer_of(stream: trio.abc.Stream) -> Peer:
    """The :class:`Peer` of an accepted stream (socket streams have an IP; others do not)."""
    sock: Any = getattr(stream, "socket", None)
    if sock is None:
        return IN_PROCESS
    try:
        address = sock.getpeername()
    except OSError:
        return UNKNOWN
    if isinstance(address, tuple):
        host = str(address[0])
        return Peer(join_host_port(host, address[1]), host)
    # A unix socket: the peer has no name of its own, the path we listen on names it.
    try:
        local = sock.getsockname()
    except OSError:
        local = ""
    return Peer(f"unix:{local or address or '-'}", None)


class Refusal(enum.Enum):
    """Why a connection is refused."""

    TOTAL = "total"
    """As many connections as ``max_total`` are served already."""
    PER_CLIENT = "per client"
    """Its IP address has ``max_per_client`` connections already."""


class AdmissionCounter:
    """Connections being served, in total and per IP; limits of 0 mean no limit."""

    __slots__ = ("_per_client", "max_per_client", "max_total", "total")

    def __init__(self, *, max_total: int = 0, max_per_client: int = 0) -> None:
        if max_total < 0 or max_per_client < 0:
            raise ValueError("connection limits must be >= 0")
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.total = 0
        self._per_client: dict[str, int] = {}

    def connections_from(self, ip: str) -> int:
        return self._per_client.get(ip, 0)

    def admit(self, ip: str | None) -> Refusal | None:
        """Count a new connection from ``ip`` and return None, or return why it is refused
        (and count nothing). Every admitted connection must be :meth:`release`\\ d once."""
        if self.max_total and self.total >= self.max_total:
            return Refusal.TOTAL
        if ip is not None:
            count = self._per_client.get(ip, 0)
            if self.max_per_client and count >= self.max_per_client:
                return Refusal.PER_CLIENT
            self._per_client[ip] = count + 1
        self.total += 1
        return None

    def release(self, ip: str | None) -> None:
        """A connection admitted by :meth:`admit` has ended."""
        self.total -= 1
        if ip is not None:
            left = self._per_client[ip] - 1
            if left:
                self._per_client[ip] = left
            else:
                del self._per_client[ip]


__all__ = ["IN_PROCESS", "UNKNOWN", "AdmissionCounter", "Peer", "Refusal", "peer_of"]
