"""``agentrpc rtt NODE [NODE]``: serf's ``rtt``, the round trip time two nodes' network
coordinates estimate (to the agent's own node when one node is given), over the agent's Serf
RPC listener (``serf_rpc_addr``), as ``serf rtt`` asks serf's agent.

Prints serf's ``Estimated a <-> b rtt: 0.123 ms``; ``--json`` prints the nodes and the
estimate in seconds. The agent RPC port shakes hands as Serf's does, then hangs up on (or
refuses) Serf's commands: that is said as the wrong port, with ``rtt``'s own flags.

Registered on the main app by ``register(app)``.
"""

from __future__ import annotations

from typing import Annotated, Final

import typer

from ..client import DEFAULT_TIMEOUT, ENV_SERF_RPC_ADDR, SerfClient
from ..client_errors import AgentGoneError, ClientError, PermissionDeniedError
from .agent_options import (
    DEFAULT_SERF_RPC_ADDR,
    AgentOptions,
    AsJson,
    RpcAuth,
    SerfRpcAddr,
    Timeout,
    agent_options,
    fail_serf_client,
    print_json,
)
from .common import echo, fail, run_trio

ERROR_PREFIX: Final = "Error getting coordinates"
SERF_PORT_HINT: Final = (
    "the Serf RPC port is the one `agentrpc serve --serf-rpc-addr ...` logs as 'Serf RPC "
    f"listening on'; pass it as --serf-rpc-addr or {ENV_SERF_RPC_ADDR}"
)


def estimate_rtt(agent: AgentOptions, first: str, other: str | None) -> tuple[str, float]:
    """The other node's name and the estimate, in seconds; every failure is one line."""

    async def main() -> tuple[str, float]:
        client = SerfClient(
            agent.rpc_addr,
            auth_key=agent.token,
            connect_timeout=agent.timeout,
            handshake_timeout=agent.timeout,
        )
        async with client:
            second = other
            if second is None:
                second = (await client.stats()).get("agent", {}).get("name", "")
            return second, await client.rtt(first, second)

    try:
        return run_trio(main)
    except AgentGoneError:
        fail(
            f"{ERROR_PREFIX}: {agent.rpc_addr} closed the connection on Serf's coordinate "
            "query: it is probably not Serf's RPC port (the agent RPC port does that), unless "
            f"the agent stopped; {SERF_PORT_HINT}"
        )
    except PermissionDeniedError as exc:
        # Serf's listener asks for auth with other words: this is the agent RPC's rpc_token.
        fail(
            f"{ERROR_PREFIX}: {exc.error}: {agent.rpc_addr} wants the agent RPC's rpc_token, "
            f"so it is probably not Serf's RPC port; {SERF_PORT_HINT} (and its serf_rpc_auth, "
            "if set, as --rpc-auth)"
        )
    except ClientError as exc:
        fail_serf_client(exc, agent, ERROR_PREFIX)


def register(app: typer.Typer) -> None:
    """Add the ``rtt`` command to ``app``."""

    @app.command()
    def rtt(
        nodes: Annotated[list[str] | None, typer.Argument(help="One or two node names.")] = None,
        serf_rpc_addr: SerfRpcAddr = DEFAULT_SERF_RPC_ADDR,
        rpc_auth: RpcAuth = "",
        timeout: Timeout = DEFAULT_TIMEOUT,
        as_json: AsJson = False,
    ) -> None:
        """Estimate the round trip time between two nodes (or a node and the agent's)."""
        if not nodes or len(nodes) > 2:
            fail("One or two node names must be specified")
        agent = agent_options(serf_rpc_addr, rpc_auth, timeout)
        first = nodes[0]
        second, seconds = estimate_rtt(agent, first, nodes[1] if len(nodes) == 2 else None)
        if as_json:
            print_json({"nodes": [first, second], "rtt_seconds": seconds})
            return
        echo(f"Estimated {first} <-> {second} rtt: {seconds * 1000.0:.3f} ms")


__all__ = ["estimate_rtt", "register"]
