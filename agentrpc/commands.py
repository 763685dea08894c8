"""The agent's commands: small handlers that take a request body and return a reply.

Commands that answer from memory (members, stats, force-leave on the local view) are *instant*:
plain functions the connection engine runs inline, with no task per frame. Commands that wait
(join contacts peers, leave runs the graceful leave, reload reads files) are coroutines that the
engine runs as tasks. ``handshake``, ``monitor`` and ``stop`` belong to the connection itself
and live in the engine.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import trio

from . import build_info
from .gossip.memberlist import MemberlistStats
from .logs import DEBUG, INFO, WARN, clip
from .membership.pool import MembershipPool
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
from .rpc_connection import AsyncHandler, InstantHandler, Reply, RPCConnection
from .serverport.server import forward_members_wan, server_addresses

if TYPE_CHECKING:
    from .agent import Agent

STATS_CACHE_SECONDS: Final = 0.001
_MEMBERLIST_COUNTERS: Final = tuple(field.name for field in dataclasses.fields(MemberlistStats))
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


class _MembersCache:
    """The encoded ``{Members: [...]}`` of one pool, rebuilt only when the pool changes."""

    __slots__ = ("_body", "_pool", "_version")

    def __init__(self, pool: MembershipPool) -> None:
        self._pool = pool
        self._version = -1
        self._body = _EMPTY_MEMBERS

    def body(self) -> Encoded:
        pool = self._pool
        if pool.version != self._version:
            self._body = Encoded(ResponseEncoder().body(members_body(pool.members())))
            self._version = pool.version
        return self._body


class AgentCommands:
    """The command table of one agent."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._encoder = ResponseEncoder()
        self._stats_body = Encoded(b"\x80")
        self._stats_expires = -1.0
        self._lan_members = _MembersCache(agent.lan)
        self._wan_members = _MembersCache(agent.wan) if agent.wan is not None else None
        instant: dict[str, InstantHandler] = {MEMBERS_LAN: self.members_lan, STATS: self.stats}
        slow: dict[str, AsyncHandler] = {
            JOIN: self.join,
            FORCE_LEAVE: self.force_leave,
            LEAVE: self.leave,
            RELOAD: self.reload,
        }
        if self._wan_members is not None:
            instant[MEMBERS_WAN] = self.members_wan
        else:
            # A client has no WAN pool: it asks a server it knows over the server port.
            slow[MEMBERS_WAN] = self.members_wan_from_servers
        self.instant: Mapping[str, InstantHandler] = instant
        self.async_: Mapping[str, AsyncHandler] = slow

    def members_lan(self, _body: Any) -> Reply:
        return "", self._lan_members.body()

    def members_wan(self, _body: Any) -> Reply:
        assert self._wan_members is not None
        return "", self._wan_members.body()

    async def members_wan_from_servers(
        self, _connection: RPCConnection, _request: Request
    ) -> Reply:
        """On a client: the WAN members as a server of the LAN pool sees them. When no server
        answers, an empty list and no error, as the reference always answers a client."""
        agent = self._agent
        servers = server_addresses(agent.lan.members())
        members = None
        if servers and agent.rpc_pool is not None:
            members = await forward_members_wan(agent.rpc_pool, servers, logger=agent.log)
        if members is None:
            agent.log.throttled(
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
        agent = self._agent
        config = agent.config
        sections: dict[str, dict[str, str]] = {
            "agent": {
                "name": config.node_name,
                "datacenter": config.datacenter,
                "server": "true" if config.server else "false",
                "uptime": f"{trio.current_time() - agent.started_at:.0f}s",
            },
            "build": _BUILD_SECTION,
            "runtime": _RUNTIME_SECTION,
            "serf_lan": agent.lan.stats(),
            "rpc": {
                **agent.rpc_stats.as_strings(),
                "monitor_dropped": str(agent.hub.monitor_dropped),
                "send_bytes_queued": str(agent.send_budget.used),
                "send_bytes_peak": str(agent.send_budget.peak),
                "send_budget_waits": str(agent.send_budget.waits),
            },
        }
        if agent.wan is not None:
            sections["serf_wan"] = agent.wan.stats()
        for kind, memberlist in agent.memberlists.items():
            counters = memberlist.stats
            sections[f"memberlist_{kind}"] = {
                name: str(getattr(counters, name)) for name in _MEMBERLIST_COUNTERS
            }
        return sections

    async def join(self, _connection: RPCConnection, request: Request) -> Reply:
        join: JoinRequest = request.body
        agent = self._agent
        if join.wan:
            if agent.wan is None:
                return ERR_WAN_JOIN_CLIENT, {"Num": 0}
            pool = agent.wan
        else:
            pool = agent.lan
        # A client can send these at will: each kind is throttled, and its strings clipped.
        kind = pool.name.upper()
        agent.log.throttled(
            INFO, "join", f"joining {kind} pool: {clip(', '.join(join.existing)) or '-'}"
        )
        num, error = await pool.join(join.existing)
        if error:
            agent.log.throttled(WARN, "join-failed", f"join ({kind}): {clip(error)}")
        else:
            agent.log.throttled(INFO, "join-done", f"join ({kind}): {num} nodes contacted")
        return error, {"Num": num}

    async def force_leave(self, _connection: RPCConnection, request: Request) -> Reply:
        node: str = request.body
        agent = self._agent
        agent.log.throttled(INFO, "force-leave", f"force leaving node: {clip(node)}")
        errors = [await agent.lan.force_leave(node)]
        wan = agent.wan
        if wan is not None:
            # On a server both pools hear it, as the reference does. WAN members are named
            # node.datacenter: a bare LAN name means that node's WAN member (an improvement on
            # the reference, which passes the bare name and so never matches on the WAN).
            wan_names = {member.name for member in wan.members()}
            wan_name = node
            if node not in wan_names and f"{node}.{agent.config.datacenter}" in wan_names:
                wan_name = f"{node}.{agent.config.datacenter}"
            errors.append(await wan.force_leave(wan_name))
        return "; ".join(error for error in errors if error), None

    async def leave(self, connection: RPCConnection, request: Request) -> None:
        agent = self._agent
        error = await agent.leave()
        await connection.send_reply(request.seq, error)
        agent.shutdown()

    async def reload(self, _connection: RPCConnection, _request: Request) -> Reply:
        return await self._agent.reload(), None
