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
from .catalog.keyring_endpoint import (
    KEYRING_INSTALL,
    KEYRING_LIST,
    KEYRING_OPERATION,
    KEYRING_REMOVE,
    KEYRING_USE,
    KeyringRequest,
    KeyringResponses,
    PoolOperation,
)
from .catalog.structs import QueryOptions, WireDecodeError
from .config import AgentConfig
from .consul_servers import forward_members_wan, server_addresses
from .log_protocol import DEBUG, INFO, WARN, LogLike, clip
from .membership import GossipPool, KeyResponse, Memberlist, MembershipPool, memberlist_stats
from .protocol.bodies import JoinRequest, members_body
from .protocol.codec import Encoded, Request, ResponseEncoder
from .protocol.constants import (
    ERR_KEYRING_CLIENT,
    ERR_WAN_JOIN_CLIENT,
    ERROR_BODIES,
    FORCE_LEAVE,
    INSTALL_KEY,
    JOIN,
    LEAVE,
    LIST_KEYS,
    MEMBERS_LAN,
    MEMBERS_WAN,
    RELOAD,
    REMOVE_KEY,
    STATS,
    USE_KEY,
)
from .rpc_connection import AsyncHandler, InstantHandler, Reply, ReplyNow, RPCStats
from .serverport.endpoints import EndpointError, RemoteError, RPCCallError
from .serverport.pool import ConnectionPool
from .serverport.server import ServerPort

STATS_CACHE_SECONDS: Final = 0.001
_EMPTY_MEMBERS = Encoded(ResponseEncoder().body({"Members": []}))
_BUILD_SECTION: Final = {
    "prerelease": build_info.PRERELEASE,
    "revision": build_info.REVISION,
    "version": build_info.VERSION,
}
RUNTIME_SECTION: Final = {
    "os": sys.platform,
    "arch": platform.machine(),
    "version": f"python{platform.python_version()}",
    "implementation": platform.python_implementation().lower(),
    "cpu_count": str(os.cpu_count() or 1),
    "trio": trio.__version__,
}


KEYRING_COMMAND_OPERATIONS: Final = {
    LIST_KEYS: KEYRING_LIST,
    INSTALL_KEY: KEYRING_INSTALL,
    USE_KEY: KEYRING_USE,
    REMOVE_KEY: KEYRING_REMOVE,
}
"""The ``Operation`` of ``Internal.KeyringOperation`` for each agent RPC keyring command."""


async def pool_keyring_operation(
    pool: MembershipPool | None, operation: str, key: str, relay_factor: int = 0
) -> KeyResponse:
    """One ``Internal.KeyringOperation`` operation (``list``, ``install``, ``use``,
    ``remove``) on every member of ``pool``, as serf's key manager runs it; a pool without
    gossip (or no pool) answers with an error saying so."""
    if pool is None:
        await trio.lowlevel.checkpoint()
        return KeyResponse(error="no such pool on this agent: no keyring to change")
    if not isinstance(pool, GossipPool):
        await trio.lowlevel.checkpoint()
        return KeyResponse(
            num_nodes=len(pool.members()),
            error=f"the {pool.name.upper()} pool has no gossip layer: no keyring to change",
        )
    if operation == KEYRING_INSTALL:
        return await pool.install_key(key, relay_factor=relay_factor)
    if operation == KEYRING_USE:
        return await pool.use_key(key, relay_factor=relay_factor)
    if operation == KEYRING_REMOVE:
        return await pool.remove_key(key, relay_factor=relay_factor)
    return await pool.list_keys(relay_factor=relay_factor)


def keyring_pool_operation(lookup: Callable[[], MembershipPool | None]) -> PoolOperation:
    """The pool callable of :func:`~agentrpc.catalog.keyring_endpoint.keyring_endpoint` over
    the pool ``lookup`` returns at each call (so it follows the pools the agent swaps in)."""

    async def run(operation: str, key: str, relay_factor: int) -> KeyResponse:
        return await pool_keyring_operation(lookup(), operation, key, relay_factor)

    return run


async def pool_key_operation(pool: MembershipPool, command: str, key: str) -> KeyResponse:
    """One key operation named as the agent RPC commands are (``install-key``, ...) on every
    member of ``pool``; a pool without gossip answers with an error saying so."""
    return await pool_keyring_operation(pool, KEYRING_COMMAND_OPERATIONS[command], key)


async def keyring_operation(
    port: ServerPort | None, request: KeyringRequest
) -> tuple[str, KeyringResponses]:
    """What a server agent does for a keyring command (Consul's ``keyringProcess``): its own
    ``Internal.KeyringOperation``, in-process through the server port (the WAN pool, this
    datacenter's LAN pool, then every other datacenter's). The error (the reply then has no
    response, as the reference's in-process call leaves it empty), or "" and the responses."""
    if port is None:
        return ERR_KEYRING_CLIENT, KeyringResponses()
    try:
        reply = await port.call_local(KEYRING_OPERATION, request.to_wire())
        return "", KeyringResponses.from_wire(reply)
    except RemoteError as exc:
        return exc.error, KeyringResponses()
    except (RPCCallError, EndpointError, WireDecodeError) as exc:
        return str(exc), KeyringResponses()


def keyring_reply(responses: KeyringResponses) -> dict[str, Any]:
    """Consul 0.7's agent RPC ``keyringResponse`` for the responses of one operation, pool by
    pool in the order the server gave them (WAN first, then each datacenter's LAN pool):
    ``Info`` per pool, then every node's message and every key's count, each entry naming its
    datacenter and pool. An empty list is nil, as Go encodes a nil slice; the keys of each
    struct in go-msgpack's order (sorted)."""
    keys: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    info: list[dict[str, Any]] = []
    for response in responses.responses:
        pool = response.pool
        datacenter = response.datacenter
        for node, message in response.messages.items():
            messages.append(
                {"Datacenter": datacenter, "Message": message, "Node": node, "Pool": pool}
            )
        for key, count in response.keys.items():
            keys.append({"Count": count, "Datacenter": datacenter, "Key": key, "Pool": pool})
        info.append(
            {
                "Datacenter": datacenter,
                "Error": response.error,
                "NumNodes": response.num_nodes,
                "Pool": pool,
            }
        )
    return {"Info": info or None, "Keys": keys or None, "Messages": messages or None}


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
    def server_port(self) -> ServerPort | None:
        """A server's own server port (its in-process calls); None on a client or before
        start."""
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

    def consul_stats(self) -> dict[str, dict[str, str]]:
        """The ``consul`` section (Consul's keys) and, on a server, ``raft`` (hashicorp/raft's
        ``Stats()``)."""
        ...

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
            INSTALL_KEY: self.keyring,
            USE_KEY: self.keyring,
            REMOVE_KEY: self.keyring,
            LIST_KEYS: self.keyring,
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
            "runtime": RUNTIME_SECTION,
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
        sections.update(host.consul_stats())
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

    async def keyring(self, request: Request, _reply_now: ReplyNow) -> Reply:
        """Consul 0.7's keyring commands: ``Internal.KeyringOperation`` on this server (the
        WAN pool, the LAN pool of every datacenter; a server's keyrings move in lock-step).
        Each pool's failure is in its ``Info`` entry and the reply's Error stays empty; a
        datacenter that could not be reached is the Error, with no entries. A client has no
        keyring to change (0.7 refuses there, as here)."""
        host = self._host
        command = request.command
        if host.wan is None:
            return ERR_KEYRING_CLIENT, ERROR_BODIES[command]
        key: str = request.body if command != LIST_KEYS else ""
        host.log.throttled(
            INFO, f"keyring-{command}", f"keyring: {command} on the WAN and LAN pools"
        )
        keyring_request = KeyringRequest(
            operation=KEYRING_COMMAND_OPERATIONS[command],
            key=key,
            options=QueryOptions(token=request.token or "", allow_stale=True),
        )
        error, responses = await keyring_operation(host.server_port, keyring_request)
        if error:
            host.log.throttled(
                WARN, f"keyring-{command}-failed", f"keyring: {command}: {clip(error)}"
            )
            return error, ERROR_BODIES[command]
        for response in responses.responses:
            if response.error:
                host.log.throttled(
                    WARN,
                    f"keyring-{command}-failed",
                    f"keyring: {command} ({response.datacenter} {response.pool}): "
                    f"{clip(response.error)}",
                )
        return "", keyring_reply(responses)
