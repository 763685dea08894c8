"""The agent's commands: small handlers that take a request body and return a reply.

Commands that answer from memory (members, stats, force-leave on the local view) are *instant*:
plain functions the connection engine runs inline, with no task per frame. Commands that wait
(join contacts peers, leave runs the graceful leave, reload reads files) are coroutines that the
engine runs as tasks. ``handshake``, ``monitor`` and ``stop`` belong to the connection itself
and live in the engine.

The commands see the agent through :class:`CommandHost`, the few things they read and do (no
import of the agent, which builds the table). The table is built once: it looks the pools up
through the host on every call, so it follows the gossip pools the agent swaps in at start.
An async command gets the request and a :data:`~agentrpc.rpc_connection.ReplyNow`, never the
connection.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import trio

from . import build_info
from .budget import SharedBudget
from .config import AgentConfig
from .consul_servers import forward_members_wan, server_addresses
from .log_protocol import DEBUG, INFO, WARN, LogLike, clip
from .membership import Memberlist, MembershipPool, memberlist_stats
from .protocol.bodies import JoinRequest, members_body
from .protocol.codec import Encoded, Request, ResponseEncoder
from .protocol.constants import (
    ERR_WAN_JOIN_CLIENT,
    FORCE_LEAVE,
    JOIN,
    LEAVE,
    MEMBERS_LAN,
    MEMBERS_WAN,
    RELOAD,
    STATS,
)
from .rpc_connection import AsyncHandler, InstantHandler, Reply, ReplyNow, RPCStats
from .serverport.pool import ConnectionPool

STATS_CACHE_SECONDS: Final = 0.001
_EMPTY_MEMBERS = Encoded(ResponseEncoder().body({"Members": []}))
_BUILD_SECTION: Final = {
    "prerelease": build_info.PRERELEASE,
    "revision": build_info.REVISION,
    "version": build_info.VERSION,
}
_RUNTIME_SECTION: Final = {
    "os": sys.platform,
    "arch": platform.machine(),
    "version": f"python{platform.python_version()}",
    "implementation": platform.python_implementation().lower(),
    "cpu_count": str(os.cpu_count() or 1),
    "trio": trio.__version__,
}


class CommandHost(Protocol):
    """What the commands read and do of the agent they serve."""

    @property
    def config(self) -> AgentConfig: ...

    @property
    def started_at(self) -> float:
        """``trio.current_time()`` when the agent started (for ``uptime``)."""
        ...

    @property
    def lan(self) -> MembershipPool: ...

    @property
    def wan(self) -> MembershipPool | None:
        """The WAN pool; None on a client (which never has one)."""
        ...

    @property
    def memberlists(self) -> Mapping[str, Memberlist]:
        """The gossip pools' memberlists by kind (``lan``, ``wan``); empty without gossip."""
        ...

    @property
    def rpc_pool(self) -> ConnectionPool | None:
        """Outgoing server-port calls (None until started)."""
        ...

    @property
    def rpc_stats(self) -> RPCStats: ...

    @property
    def send_budget(self) -> SharedBudget: ...

    @property
    def monitor_dropped(self) -> int:
        """Log lines dropped for slow monitors, all monitors together."""
        ...

    @property
    def log(self) -> LogLike: ...

    async def leave(self) -> str:
        """Leave every pool gracefully; the errors joined, or ""."""
        ...

    async def reload(self) -> str:
        """Re-read the config files; the error, or ""."""
        ...

    def shutdown(self) -> None: ...


class _MembersCache:
    """The encoded ``{Members: [...]}`` of the pool ``lookup`` returns, rebuilt only when that
    pool (or what it holds) changes."""

    __slots__ = ("_body", "_lookup", "_pool", "_version")

    def __init__(self, lookup: Callable[[], MembershipPool | None]) -> None:
        self._lookup = lookup
        self._pool: MembershipPool | None = None
        self._version = -1
        self._body = _EMPTY_MEMBERS

    def body(self) -> Encoded:
        pool = self._lookup()
        if pool is None:
            return _EMPTY_MEMBERS
        if pool is not self._pool or pool.version != self._version:
            self._body = Encoded(ResponseEncoder().body(members_body(pool.members())))
            self._pool = pool
            self._version = pool.version
        return self._body


class AgentCommands:
    """The command table of one agent (built once; see the module docstring)."""

    def __init__(self, host: CommandHost) -> None:
        self._host = host
        self._encoder = ResponseEncoder()
        self._stats_body = Encoded(b"\x80")
        self._stats_expires = -1.0
        self._lan_members = _MembersCache(lambda: host.lan)
        self._wan_members = _MembersCache(lambda: host.wan)
        instant: dict[str, InstantHandler] = {MEMBERS_LAN: self.members_lan, STATS: self.stats}
        slow: dict[str, AsyncHandler] = {
            JOIN: self.join,
            FORCE_LEAVE: self.force_leave,
            LEAVE: self.leave,
            RELOAD: self.reload,
        }
        if host.wan is not None:
            instant[MEMBERS_WAN] = self.members_wan
        else:
            # A client has no WAN pool: it asks a server it knows over the server port.
            slow[MEMBERS_WAN] = self.members_wan_from_servers
        self.instant: Mapping[str, InstantHandler] = instant
        self.async_: Mapping[str, AsyncHandler] = slow

    def members_lan(self, _body: Any) -> Reply:
        return "", self._lan_members.body()

    def members_wan(self, _body: Any) -> Reply:
        return "", self._wan_members.body()

    async def members_wan_from_servers(self, _request: Request, _reply_now: ReplyNow) -> Reply:
        """On a client: the WAN members as a server of the LAN pool sees them. When no server
        answers, an empty list and no error, as the reference always answers a client."""
        host = self._host
        servers = server_addresses(host.lan.members())
        members = None
        rpc_pool = host.rpc_pool
        if servers and rpc_pool is not None:
            members = await forward_members_wan(rpc_pool, servers, logger=host.log)
        if members is None:
            host.log.throttled(
                DEBUG,
                "members-wan-unanswered",
                "members-wan: no server answered"
                + (f" (tried {', '.join(servers)})" if servers else " (no server known)")
                + "; answering with an empty list",
            )
            return "", _EMPTY_MEMBERS
        return "", {"Members": members}

    def stats(self, _body: Any) -> Reply:
        # Building and encoding every section costs ~15 us; under a flood of stats requests
        # one encoding serves all that arrive within a millisecond (no one can tell).
        now = time.monotonic()
        if now >= self._stats_expires:
            self._stats_body = Encoded(self._encoder.body(self.stats_sections()))
            self._stats_expires = now + STATS_CACHE_SECONDS
        return "", self._stats_body

    def stats_sections(self) -> dict[str, dict[str, str]]:
        host = self._host
        config = host.config
        sections: dict[str, dict[str, str]] = {
            "agent": {
                "name": config.node_name,
                "datacenter": config.datacenter,
                "server": "true" if config.server else "false",
                "uptime": f"{trio.current_time() - host.started_at:.0f}s",
            },
            "build": _BUILD_SECTION,
            "runtime": _RUNTIME_SECTION,
            "serf_lan": host.lan.stats(),
            "rpc": {
                **host.rpc_stats.as_strings(),
                "monitor_dropped": str(host.monitor_dropped),
                "send_bytes_queued": str(host.send_budget.used),
                "send_bytes_peak": str(host.send_budget.peak),
                "send_budget_waits": str(host.send_budget.waits),
            },
        }
        wan = host.wan
        if wan is not None:
            sections["serf_wan"] = wan.stats()
        for kind, memberlist in host.memberlists.items():
            sections[f"memberlist_{kind}"] = memberlist_stats(memberlist)
        return sections

    async def join(self, request: Request, _reply_now: ReplyNow) -> Reply:
        join: JoinRequest = request.body
        host = self._host
        if join.wan:
            wan = host.wan
            if wan is None:
                return ERR_WAN_JOIN_CLIENT, {"Num": 0}
            pool = wan
        else:
            pool = host.lan
        # A client can send these at will: each kind is throttled, and its strings clipped.
        kind = pool.name.upper()
        log = host.log
        log.throttled(INFO, "join", f"joining {kind} pool: {clip(', '.join(join.existing)) or '-'}")
        num, error = await pool.join(join.existing)
        if error:
            log.throttled(WARN, "join-failed", f"join ({kind}): {clip(error)}")
        else:
            log.throttled(INFO, "join-done", f"join ({kind}): {num} nodes contacted")
        return error, {"Num": num}

    async def force_leave(self, request: Request, _reply_now: ReplyNow) -> Reply:
        node: str = request.body
        host = self._host
        host.log.throttled(INFO, "force-leave", f"force leaving node: {clip(node)}")
        errors = [await host.lan.force_leave(node)]
        wan = host.wan
        if wan is not None:
            # On a server both pools hear it, as the reference does. WAN members are named
            # node.datacenter: a bare LAN name means that node's WAN member (an improvement on
            # the reference, which passes the bare name and so never matches on the WAN).
            wan_names = {member.name for member in wan.members()}
            wan_name = node
            datacenter = host.config.datacenter
            if node not in wan_names and f"{node}.{datacenter}" in wan_names:
                wan_name = f"{node}.{datacenter}"
            errors.append(await wan.force_leave(wan_name))
        return "; ".join(error for error in errors if error), None

    async def leave(self, _request: Request, reply_now: ReplyNow) -> None:
        host = self._host
        error = await host.leave()
        await reply_now(error, None)  # answered before the agent goes away
        host.shutdown()

    async def reload(self, _request: Request, _reply_now: ReplyNow) -> Reply:
        return await self._host.reload(), None
