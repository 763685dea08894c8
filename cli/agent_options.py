"""What the commands that drive an agent share: the options that say how to reach it, running
a client against it, and each way that can fail said in one line with what to do.

Two dialects: :func:`run_client` drives the agent RPC (Consul's, ``--rpc-addr``), and
:func:`run_serf_client` Serf's own (``--serf-rpc-addr``, the agent's ``serf_rpc_addr``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Annotated, Final, NoReturn, TypeVar

import typer

from ..client import (
    DEFAULT_SERF_ADDRESS,
    ENV_RPC_ADDR,
    ENV_RPC_TOKEN,
    ENV_SERF_RPC_ADDR,
    ENV_SERF_RPC_AUTH,
    Client,
    SerfClient,
)
from ..client_errors import (
    AgentConnectionError,
    AgentGoneError,
    AgentTimeoutError,
    ClientError,
    InvalidAddressError,
    NotAnAgentError,
    PermissionDeniedError,
    RPCError,
)
from ..protocol.constants import ERR_AUTH_REQUIRED, ERR_INVALID_AUTH_TOKEN
from .common import echo, fail, run_trio

T = TypeVar("T")
C = TypeVar("C", bound=AbstractAsyncContextManager[object])

ENV_RPC_TIMEOUT: Final = "AGENTRPC_RPC_TIMEOUT"

RpcAddr = Annotated[
    str,
    typer.Option(
        "--rpc-addr",
        envvar=ENV_RPC_ADDR,
        help=f"RPC address of the agent (HOST:PORT or unix:///path); env {ENV_RPC_ADDR}.",
    ),
]

Token = Annotated[
    str,
    typer.Option(
        "--token",
        envvar=ENV_RPC_TOKEN,
        help=f"RPC token, when the agent has rpc_token set; env {ENV_RPC_TOKEN}.",
        show_default=False,
    ),
]

Timeout = Annotated[
    float,
    typer.Option(
        "--timeout",
        envvar=ENV_RPC_TIMEOUT,
        help=f"Seconds to connect, and again for the handshake; env {ENV_RPC_TIMEOUT}.",
    ),
]

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """How a command reaches its agent."""

    rpc_addr: str
    token: str
    timeout: float


def agent_options(rpc_addr: str, token: str, timeout: float) -> AgentOptions:
    if not (timeout > 0 and math.isfinite(timeout)):
        fail(f"Invalid --timeout {timeout!r}: it must be a positive number of seconds.")
    return AgentOptions(rpc_addr, token, timeout)


def run_client(
    agent: AgentOptions, action: Callable[[Client], Awaitable[T]], error_prefix: str
) -> T:
    """Connect, handshake, run ``action``; turn every expected failure into one line."""
    return _run_against(
        lambda: Client(
            agent.rpc_addr,
            token=agent.token,
            connect_timeout=agent.timeout,
            handshake_timeout=agent.timeout,
        ),
        action,
        lambda exc: fail_client(exc, agent, error_prefix),
    )


def _run_against(
    open_client: Callable[[], C],
    action: Callable[[C], Awaitable[T]],
    on_error: Callable[[ClientError], NoReturn],
) -> T:
    """Both dialects' runner: open the client (connect and handshake), run ``action`` on it,
    close it; an expected failure (:class:`ClientError`) goes to ``on_error``, which exits."""

    async def main() -> T:
        client = open_client()
        async with client:
            return await action(client)

    try:
        return run_trio(main)
    except ClientError as exc:
        on_error(exc)


def fail_client(exc: ClientError, agent: AgentOptions, error_prefix: str) -> NoReturn:
    """One line for each way a command can fail against its agent, with what to do."""
    if isinstance(exc, InvalidAddressError):
        fail(f"Error connecting to agent: {exc}; --rpc-addr takes HOST:PORT or unix:///path")
    if isinstance(exc, AgentGoneError):
        fail(f"{error_prefix}: {exc}")
    if isinstance(exc, AgentTimeoutError):
        fail(f"Error connecting to agent: {exc}; --timeout ({ENV_RPC_TIMEOUT}) sets the deadline")
    if isinstance(exc, NotAnAgentError):
        fail(f"Error connecting to agent: {exc}")
    if isinstance(exc, AgentConnectionError):
        fail(
            f"Error connecting to agent: {exc}; is the agent running? `agentrpc serve` logs "
            f"its address as 'RPC listening on'; pass it as --rpc-addr or {ENV_RPC_ADDR}"
        )
    if isinstance(exc, PermissionDeniedError):
        if agent.token:
            fail(
                f"{error_prefix}: {exc.error}: the token given (--token or {ENV_RPC_TOKEN}) is "
                "not the agent's rpc_token"
            )
        fail(
            f"{error_prefix}: {exc.error}: the agent requires an RPC token; pass --token or set "
            f"{ENV_RPC_TOKEN}"
        )
    if isinstance(exc, RPCError):
        fail(f"{error_prefix}: {exc.error}")
    fail(f"{error_prefix}: {exc}")


def columnize(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, like the reference CLI's tables."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def print_json(data: object) -> None:
    # ensure_ascii (the default) keeps the output valid ASCII JSON: a name that was not UTF-8
    # shows as \udcXX escapes, which json.loads turns back into the same str.
    echo(json.dumps(data, indent=2, ensure_ascii=True, sort_keys=True))


SerfRpcAddr = Annotated[
    str,
    typer.Option(
        "--serf-rpc-addr",
        envvar=ENV_SERF_RPC_ADDR,
        help=(
            "Address of the agent's Serf RPC listener (its serf_rpc_addr, or a serf agent's "
            f"-rpc-addr); env {ENV_SERF_RPC_ADDR}."
        ),
    ),
]

RpcAuth = Annotated[
    str,
    typer.Option(
        "--rpc-auth",
        envvar=ENV_SERF_RPC_AUTH,
        help=f"Serf RPC auth key, when the agent has serf_rpc_auth set; env {ENV_SERF_RPC_AUTH}.",
        show_default=False,
    ),
]

DEFAULT_SERF_RPC_ADDR: Final = DEFAULT_SERF_ADDRESS


def run_serf_client(
    agent: AgentOptions, action: Callable[[SerfClient], Awaitable[T]], error_prefix: str
) -> T:
    """:func:`run_client` over Serf's dialect (``agent.token`` is the auth key)."""
    return _run_against(
        lambda: SerfClient(
            agent.rpc_addr,
            auth_key=agent.token,
            connect_timeout=agent.timeout,
            handshake_timeout=agent.timeout,
        ),
        action,
        lambda exc: fail_serf_client(exc, agent, error_prefix),
    )


def fail_serf_client(exc: ClientError, agent: AgentOptions, error_prefix: str) -> NoReturn:
    """:func:`fail_client`'s lines, with the Serf listener's flags and hints."""
    if isinstance(exc, AgentConnectionError) and not isinstance(
        exc, AgentGoneError | AgentTimeoutError | NotAnAgentError
    ):
        fail(
            f"Error connecting to Serf agent: {exc}; is the agent running with a Serf RPC "
            "listener? `agentrpc serve --serf-rpc-addr ...` logs it as 'Serf RPC listening "
            f"on'; pass it as --serf-rpc-addr or {ENV_SERF_RPC_ADDR}"
        )
    if isinstance(exc, RPCError) and exc.error in (ERR_AUTH_REQUIRED, ERR_INVALID_AUTH_TOKEN):
        fail(
            f"{error_prefix}: {exc.error}: pass the agent's serf_rpc_auth as --rpc-auth or "
            f"{ENV_SERF_RPC_AUTH}"
        )
    fail_client(exc, agent, error_prefix)
