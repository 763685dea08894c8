"""A client agent's server manager: every server RPC of a client agent goes through it (the
HTTP API's in-process calls, DNS on a client, anti-entropy), as Consul's client agents route
through ``consul/servers``.

The rules live in :mod:`agentrpc.catalog.server_list` (pure); this module feeds them the LAN
pool's servers (:meth:`ServerManager.refresh`, on every LAN member event), calls through the
connection pool, and runs the periodic rebalance (:meth:`ServerManager.run`) that pings the new
front server with ``Status.Ping``.

Failures and retries: a server that does not answer is rotated to the back of the list and the
error logged, as the reference does; the call then moves on to the next server when that is
safe: always when the connection could not even be set up (nothing was sent,
:class:`~agentrpc.serverport.endpoints.ConnectFailed`), and for any other failure only when the
request is not one of the writes that must not run twice (:data:`NOT_RETRIED`: a ``KVS.Apply``
with CAS or a lock, a new session). Each server is tried at most once per call. An answer
with an error (:class:`~agentrpc.serverport.endpoints.RemoteError`) is an answer: raised at
once. With no server known the call fails with ``No known Consul servers``.

Resources: the manager holds its list (one entry per server of the datacenter) and borrows
the agent's :class:`~agentrpc.serverport.pool.ConnectionPool`; :meth:`run` is its only task.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any, Final

import trio

from .catalog.constants import ERR_NO_SERVERS
from .catalog.server_list import NOT_RETRIED, ServerList, rebalance_interval
from .catalog.servers import ServerInfo, parse_server
from .log_protocol import DEBUG, LogLike, NullLog, clip
from .member_status import STATUS_ALIVE
from .protocol.bodies import Member
from .serverport.endpoints import ConnectFailed, RemoteError, RPCCallError
from .serverport.pool import ConnectionPool

__all__ = ["NOT_RETRIED", "PING_TIMEOUT", "ServerManager"]

PING_TIMEOUT: Final = 5.0
"""Seconds a rebalance waits for each ``Status.Ping``."""


class ServerManager:
    """Routes a client agent's server RPCs over its datacenter's servers (see the module)."""

    def __init__(
        self,
        pool: Callable[[], ConnectionPool | None],
        members: Callable[[], Iterable[Member]],
        *,
        datacenter: str,
        logger: LogLike | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._pool = pool
        self._members = members
        self.datacenter = datacenter
        self._log: LogLike = logger or NullLog()
        self._rng = rng or random.Random()
        self.servers = ServerList()
        self.on_server_added: Callable[[], None] | None = None
        """Called when :meth:`refresh` finds a server it did not have (Consul's
        ``ServerUp``: the agent's anti-entropy retries at once instead of at its next try)."""
        self.rebalances = 0
        """Rebalances run so far (for tests and stats)."""

    # ------------------------------------------------------------------ membership

    def _current(self) -> list[ServerInfo]:
        found: list[ServerInfo] = []
        for member in self._members():
            if member.status != STATUS_ALIVE:
                continue
            server = parse_server(member)
            if server is not None and server.datacenter == self.datacenter:
                found.append(server)
        return found

    def refresh(self) -> None:
        """Take the LAN pool's current servers (call on every LAN member event)."""
        change = self.servers.sync(self._current())
        for server in change.added:
            self._log.info(f"consul: adding server {server.name} ({server.address})")
        for server in change.removed:
            self._log.info(f"consul: removing server {server.name} ({server.address})")
        if change.added and self.on_server_added is not None:
            self.on_server_added()

    # ------------------------------------------------------------------ calls

    async def call(self, method: str, args: Any, *, max_time: float | None = None) -> Any:
        """``method`` on a server of this datacenter (see the module for retries)."""
        pool = self._pool()
        if pool is None or self.servers.first() is None:
            self.refresh()
        server = self.servers.first()
        if pool is None or server is None:
            raise RPCCallError(ERR_NO_SERVERS)
        tried: set[str] = set()
        while True:
            tried.add(server.address)
            try:
                return await pool.call(server.address, method, args, max_time=max_time)
            except RemoteError:
                raise
            except RPCCallError as exc:
                self.servers.failed(server)
                self._log.error(f"consul: RPC failed to server {server.address}: {clip(exc)}")
                following = self.servers.first()
                retry = isinstance(exc, ConnectFailed) or method not in NOT_RETRIED
                if not retry or following is None or following.address in tried:
                    raise
                server = following

    # ------------------------------------------------------------------ rebalance

    async def rebalance(self) -> bool:
        """Shuffle, ping the front servers until one answers, and keep that order; False
        when none answered (the list is marked offline) or the list changed under it."""
        pool = self._pool()
        order = self.servers.rebalance_order(self._rng)
        healthy = False
        if pool is not None:
            for _ in range(len(order)):
                candidate = order[0]
                try:
                    with trio.fail_after(PING_TIMEOUT):
                        await pool.ping(candidate.address)
                    healthy = True
                    break
                except (RPCCallError, RemoteError, trio.TooSlowError) as exc:
                    self._log.throttled(
                        DEBUG,
                        "server-manager:ping-failed",
                        f'manager: pinging server "{candidate.name} ({candidate.address})" '
                        f"failed: {clip(exc)}",
                    )
                    order.append(order.pop(0))
        self.rebalances += 1
        if not order:
            return False
        if not healthy:
            self.servers.rebalanced(order, False)
            self._log.debug("manager: No healthy servers during rebalance, aborting")
            return False
        done = self.servers.rebalanced(order, True)
        if done:
            front = order[0]
            self._log.debug(
                f"manager: Rebalanced {len(self.servers)} servers, next active server is "
                f"{front.name} ({front.address})"
            )
        return done

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Rebalance every :func:`~agentrpc.catalog.server_list.rebalance_interval` (sized
        by the LAN), until cancelled."""
        self.refresh()
        task_status.started()
        while True:
            members = sum(1 for _ in self._members())
            await trio.sleep(rebalance_interval(len(self.servers), members, self._rng))
            await self.rebalance()
