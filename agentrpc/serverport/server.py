"""The server port: one listener, the first-byte router, the RPC endpoints.

A generic engine: which endpoints it serves is the caller's business (the agent registers
Consul's in :mod:`agentrpc.consul_servers`). Wiring, for the agent::

    endpoints = Endpoints()                         # Status.Ping included
    endpoints.register(name, handler)               # the agent's endpoints
    port = ServerPort(config.server_addr, endpoints, tls, hub.logger("agent.server.rpc"),
                      RouterLimits(send_queue_bytes=config.send_queue_bytes),
                      send_budget=agent.send_budget)   # the agent-wide byte budget
    address = await nursery.start(port.run)         # the really bound address
    pool.set_local([address], port.call_local)      # calls to ourselves stay in-process
    ...
    port.set_max_conns_per_client(n)                # on reload
    port.set_send_queue_bytes(config.send_queue_bytes)  # on reload (new streams)
    port.set_max_object_size(config.max_frame_size)     # on reload (new streams)
    port.shutdown()                                 # run() returns once connections drained
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from ..budget import SharedBudget
from ..defaults import DRAIN_TIMEOUT
from ..log_protocol import LogLike
from ..transports import (
    DEFAULT_NETWORK,
    Address,
    BoundListener,
    MemoryNetwork,
    open_listeners,
    parse_address as _parse,
)
from .endpoints import Endpoints, RPCServer
from .router import GossipStreamHandler, RaftStreamHandler, Router, RouterLimits
from .rpc_codec import DEFAULT_SERVER_PORT
from .tls import TLSConfig

DEFAULT_DRAIN_TIMEOUT: Final = DRAIN_TIMEOUT


async def serve_until(
    bound: list[BoundListener],
    handler: Callable[[trio.abc.Stream], Awaitable[object]],
    stop: trio.Event,
    *,
    log: LogLike,
    what: str,
    drain: Callable[[], float],
    task_status: trio.TaskStatus[Address],
) -> None:
    """Serve every connection of ``bound`` with ``handler`` until ``stop`` is set.

    Logs ``"<what> listening on <address>"`` for each listener and reports the first bound
    address through ``task_status``. On ``stop`` it stops accepting, then calls ``drain()``,
    which closes what should go at once and returns the seconds the open connections get
    before they are cancelled. The connections run in a nursery of this call, so it returns
    once they are done; the listeners are closed however it ends. (The agent's RPC listeners
    and the HTTP API serve the same way.)
    """
    listeners = [listener for listener, _ in bound]
    for _, address in bound:
        log.info(f"{what} listening on {address}")
    try:
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as services:
                services.start_soon(
                    functools.partial(
                        trio.serve_listeners, handler, listeners, handler_nursery=connections
                    )
                )
                task_status.started(bound[0][1])
                await stop.wait()
                services.cancel_scope.cancel()
            connections.cancel_scope.deadline = trio.current_time() + drain()
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


class ServerPort:
    """Listens on ``bind`` and serves every connection through a :class:`Router`."""

    def __init__(
        self,
        bind: str | Address,
        endpoints: Endpoints,
        tls: TLSConfig | None,
        logger: LogLike,
        limits: RouterLimits | None = None,
        *,
        gossip_handler: GossipStreamHandler | None = None,
        network: MemoryNetwork = DEFAULT_NETWORK,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        send_budget: SharedBudget | None = None,
    ) -> None:
        self.bind = bind if isinstance(bind, Address) else _parse(bind)
        self.endpoints = endpoints
        self.limits = limits = limits or RouterLimits()
        self.send_budget = send_budget if send_budget is not None else SharedBudget()
        """The agent-wide byte budget of what this port queues to send (the agent's own when
        it passes one, else one of the default size for this port alone)."""
        self.rpc = RPCServer(
            endpoints,
            logger,
            max_object_size=limits.max_object_size,
            send_queue_bytes=limits.send_queue_bytes,
            send_budget=self.send_budget,
        )
        self.router = Router(
            self.rpc,
            logger,
            tls=tls,
            limits=limits,
            gossip_handler=gossip_handler,
            send_budget=self.send_budget,
        )
        self.address: Address | None = None
        """The address really bound (known once :meth:`run` has started)."""
        self._log = logger
        self._network = network
        self._drain_timeout = drain_timeout
        self._shutdown = trio.Event()

    async def run(
        self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until :meth:`shutdown`; ``task_status.started(bound address)``.

        On shutdown the listener closes first, yamux sessions go away, and connections get
        ``drain_timeout`` seconds to finish before they are cancelled.
        """
        bound = await open_listeners(self.bind, network=self._network)
        self.address = bound[0][1]
        await serve_until(
            bound,
            self.router.handle_connection,
            self._shutdown,
            log=self._log,
            what="server port",
            drain=self._drain,
            task_status=task_status,
        )

    def _drain(self) -> float:
        self.router.close_sessions()
        return self._drain_timeout

    def shutdown(self) -> None:
        """Stop accepting and close; :meth:`run` returns once connections are done."""
        self._shutdown.set()

    async def call_local(self, method: str, args: Any) -> Any:
        """Call an endpoint in-process: a memory stream through the same router."""
        return await self.router.call_local(method, args)

    def set_max_conns_per_client(self, limit: int) -> None:
        self.router.set_max_conns_per_client(limit)

    def set_send_queue_bytes(self, limit: int) -> None:
        """Change each stream's byte budget (``reload``); applies to streams opened after it.
        The agent-wide budget changes with ``send_budget.set_limit``."""
        if limit < 1:
            raise ValueError("send_queue_bytes must be positive")
        self.rpc.send_queue_bytes = limit

    def set_max_object_size(self, limit: int) -> None:
        """Change the largest msgpack object of a byte-0 request (``reload`` of
        ``max_frame_size``); applies to streams opened after it."""
        if limit < 1:
            raise ValueError("max_object_size must be positive")
        self.rpc.max_object_size = limit

    def set_gossip_handler(self, handler: GossipStreamHandler | None) -> None:
        self.router.set_gossip_handler(handler)

    def set_raft_handler(self, handler: RaftStreamHandler | None) -> None:
        """Byte 1 (Raft) from now on goes to ``handler`` (None: refused again)."""
        self.router.set_raft_handler(handler)


__all__ = [
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_SERVER_PORT",
    "ServerPort",
]
