"""Serf's own agent RPC dialect on the agent RPC engine: one :class:`SerfConnection` per client
of the ``serf_rpc_addr`` listener.

The framing, the writer, the byte budgets, the monitor and the orderly close are the engine's
(:class:`~agentrpc.rpc_connection.RPCConnection`); what differs is the command table (a
:class:`~agentrpc.serf_commands.SerfCommands` per connection), the session (a
:class:`~agentrpc.serf_session.SerfSession`: serf's handshake text, ``auth``, event streams
keyed by Seq) and one decision the engine does not know: ``stop`` of an event stream, which
cancels that stream's scope before the reply is queued (so no record of that Seq follows it),
as the engine does for the monitor.
"""

from __future__ import annotations

from collections.abc import Mapping

import trio

from .budget import SharedBudget
from .log_protocol import LogLike
from .logs import LogSubscription
from .protocol.codec import ParserPool, Request
from .protocol.rpc_session import Decision
from .rpc_connection import (
    AsyncHandler,
    EngineLimits,
    InstantHandler,
    RPCConnection,
    RPCServices,
    RPCStats,
)
from .serf_commands import SerfCommands, SerfHost
from .serf_session import STOP_STREAM


class SerfServices:
    """What one Serf-dialect connection needs of the agent (an
    :class:`~agentrpc.rpc_connection.RPCServices`), with that connection's command tables."""

    def __init__(
        self,
        host: SerfHost,
        agent: RPCServices,
        *,
        auth_key: str,
        stats: RPCStats,
        log: LogLike,
    ) -> None:
        self.commands = SerfCommands(host, auth_key)
        self._agent = agent
        self._stats = stats
        self._log = log

    @property
    def instant_commands(self) -> Mapping[str, InstantHandler]:
        return self.commands.instant

    @property
    def async_commands(self) -> Mapping[str, AsyncHandler]:
        return self.commands.async_

    @property
    def limits(self) -> EngineLimits:
        return self._agent.limits

    @property
    def rpc_stats(self) -> RPCStats:
        return self._stats

    @property
    def rpc_log(self) -> LogLike:
        return self._log

    @property
    def rpc_token(self) -> str:
        return ""  # serf has no per-request token: ``auth`` gates the connection instead

    @property
    def send_budget(self) -> SharedBudget | None:
        return self._agent.send_budget

    @property
    def parser_pool(self) -> ParserPool | None:
        return self._agent.parser_pool

    def subscribe_log(self, min_level: int, queue_size: int) -> LogSubscription:
        return self._agent.subscribe_log(min_level, queue_size)


class SerfConnection(RPCConnection):
    """The engine with Serf's session and commands (see the module docstring)."""

    def __init__(self, stream: trio.abc.Stream, services: SerfServices, peer: str) -> None:
        super().__init__(stream, services, peer)
        self._serf = services.commands
        self._session = services.commands.session

    def _answer(self, decision: Decision, request: Request) -> bytes | None:
        if decision is STOP_STREAM:
            # Cancelled before the reply is queued: no record of that Seq can follow it.
            self._serf.cancel_stream(request.body)
            return self._encoder.header(request.seq)
        return super()._answer(decision, request)


__all__ = ["SerfConnection", "SerfServices"]
