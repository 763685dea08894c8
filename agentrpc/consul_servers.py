"""Consul's agent-to-server calls over the server port: the WAN-members endpoint a server
serves, how a client agent finds the servers of its LAN pool, and the forwarded call.

- A server registers :data:`MEMBERS_WAN_ENDPOINT` on its server port with
  :func:`members_wan_endpoint` over its WAN pool.
- A client agent has no WAN pool: :func:`server_addresses` picks the server ports of the
  live servers among its LAN members (tags ``role=consul`` and ``port``, as Consul's
  ``isConsulServer``), and :func:`forward_members_wan` asks them in order.

This is agent logic on top of the generic server-port engine (:mod:`agentrpc.serverport`),
which knows nothing of members or tags.

Resources: :func:`forward_members_wan` borrows the caller's
:class:`~agentrpc.serverport.pool.ConnectionPool` and holds nothing itself. Errors: a server
that does not answer (:class:`~agentrpc.serverport.endpoints.RPCCallError`), answers with an
error (:class:`~agentrpc.serverport.endpoints.RemoteError`), cannot be addressed
(:class:`~agentrpc.transports.AddressError`) or sends a malformed reply is logged (throttled,
its text clipped) and the next one is asked; every other exception propagates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

from .hostport import join_host_port
from .log_protocol import DEBUG, WARN, LogLike, NullLog, clip
from .member_status import STATUS_ALIVE
from .protocol.bodies import Member
from .serverport.endpoints import Handler, RemoteError, RPCCallError
from .serverport.pool import ConnectionPool
from .transports import Address, AddressError

MEMBERS_WAN_ENDPOINT: Final = "Agent.MembersWAN"
"""Body ``{}`` in; ``{"Members": [Member wire dicts]}`` out (the agent RPC's members body)."""
SERVER_ROLE: Final = "consul"
"""The ``role`` tag of a server agent (a client's is ``node``)."""


def members_wan_endpoint(source: Callable[[], Iterable[Member]]) -> Handler:
    """The server's ``Agent.MembersWAN`` endpoint over a source of members (the WAN pool)."""

    def members_wan(_body: Any) -> dict[str, Any]:
        return {"Members": [member.to_wire() for member in source()]}

    return members_wan


def server_addresses(members: Iterable[Member]) -> list[str]:
    """Server ports of the live servers among LAN members (tags ``role=consul``, ``port``)."""
    found: list[str] = []
    for member in members:
        tags = member.tags
        port = tags.get("port", "")
        if member.status != STATUS_ALIVE or tags.get("role") != SERVER_ROLE or not port.isdigit():
            continue
        found.append(join_host_port(str(member.addr), port))
    return found


async def forward_members_wan(
    pool: ConnectionPool, servers: Iterable[str | Address], *, logger: LogLike | None = None
) -> list[dict[str, Any]] | None:
    """Ask the servers, in order, for their WAN members; the first good answer wins.

    Returns the Member wire dicts (as :meth:`Member.to_wire` makes them), or None when no
    server answered (a client-mode agent then answers ``members-wan`` with an empty list).
    """
    log: LogLike = logger or NullLog()
    for server in servers:
        try:
            reply = await pool.call(server, MEMBERS_WAN_ENDPOINT, {})
        except (RPCCallError, RemoteError, AddressError) as exc:
            log.throttled(
                DEBUG,
                "server-port:members-wan-no-answer",
                f"members-wan: server {server} did not answer: {clip(exc)}",
            )
            continue
        members = reply.get("Members") if isinstance(reply, dict) else None
        if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
            log.throttled(
                WARN,
                "server-port:members-wan-malformed",
                f"members-wan: server {server} sent a malformed reply",
            )
            continue
        return members
    return None


__all__ = [
    "MEMBERS_WAN_ENDPOINT",
    "SERVER_ROLE",
    "forward_members_wan",
    "members_wan_endpoint",
    "server_addresses",
]
