"""``agentrpc event`` and ``agentrpc query``: serf's ``event`` and ``query`` commands, over the
agent's Serf RPC listener (``serf_rpc_addr``; Consul 0.7 sent events over its HTTP API, and
its agent RPC has no such command, so these speak Serf's dialect, as the ``serf`` CLI does).

``event`` prints serf's ``Event 'NAME' dispatched! Coalescing enabled: true``; ``query``
streams serf's text as acks and responses arrive (``Query 'NAME' dispatched``, ``Ack from
'node'``, ``Response from 'node': payload``, then the totals at the deadline); ``--json``
prints serf's ``{"Acks": [...], "Responses": {...}}`` at the end. Ctrl-C ends a query early
(exit 130, as any interrupted command).

Registered on the main app by ``register(app)``.
"""

from __future__ import annotations

import re
from typing import Annotated

import typer

from ..client import DEFAULT_TIMEOUT, QueryAck, SerfClient
from .agent_options import (
    DEFAULT_SERF_RPC_ADDR,
    AsJson,
    RpcAuth,
    SerfRpcAddr,
    Timeout,
    agent_options,
    print_json,
    run_serf_client,
)
from .common import echo, fail

_TAG_FILTER = re.compile(r"^([^=]+)=(.*)$")


def register(app: typer.Typer) -> None:
    """Add the ``event`` and ``query`` commands to ``app``."""

    @app.command()
    def event(
        name: Annotated[str, typer.Argument(help="The event's name.")],
        payload: Annotated[str | None, typer.Argument(help="Its payload.")] = None,
        coalesce: Annotated[
            bool,
            typer.Option(
                "--coalesce/--no-coalesce", help="Let agents coalesce events of this name."
            ),
        ] = True,
        serf_rpc_addr: SerfRpcAddr = DEFAULT_SERF_RPC_ADDR,
        rpc_auth: RpcAuth = "",
        timeout: Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        """Send a user event to the cluster (serf's ``event``)."""
        agent = agent_options(serf_rpc_addr, rpc_auth, timeout)
        data = payload.encode("utf-8", "surrogateescape") if payload is not None else b""

        async def send(client: SerfClient) -> None:
            await client.event(name, data, coalesce=coalesce)

        run_serf_client(agent, send, "Error sending event")
        echo(f"Event '{name}' dispatched! Coalescing enabled: {'true' if coalesce else 'false'}")

    @app.command()
    def query(
        name: Annotated[str, typer.Argument(help="The query's name.")],
        payload: Annotated[str | None, typer.Argument(help="Its payload.")] = None,
        node: Annotated[
            list[str] | None, typer.Option("--node", help="Only this node answers; repeatable.")
        ] = None,
        tag: Annotated[
            list[str] | None,
            typer.Option("--tag", help="Only nodes whose tag matches: key=regexp; repeatable."),
        ] = None,
        no_ack: Annotated[bool, typer.Option("--no-ack", help="Do not ask for acks.")] = False,
        relay_factor: Annotated[
            int, typer.Option("--relay-factor", help="Relay each response through N nodes.")
        ] = 0,
        query_timeout: Annotated[
            str,
            typer.Option(
                "--query-timeout",
                help="How long the query lasts (Go duration or seconds; default serf's).",
            ),
        ] = "",
        serf_rpc_addr: SerfRpcAddr = DEFAULT_SERF_RPC_ADDR,
        rpc_auth: RpcAuth = "",
        timeout: Timeout = DEFAULT_TIMEOUT,
        as_json: AsJson = False,
    ) -> None:
        """Send a query and print the acks and responses as they come (serf's ``query``)."""
        if not 0 <= relay_factor <= 255:
            fail("Relay factor must be between 0 and 255")
        tags: dict[str, str] = {}
        for text in tag or []:
            match = _TAG_FILTER.match(text)
            if match is None:
                fail(f"Invalid --tag {text!r}: use key=regexp")
            tags[match.group(1)] = match.group(2)
        lifetime = 0.0
        if query_timeout:
            from ..config import parse_duration  # here: the other commands start without it

            try:
                lifetime = float(query_timeout)
            except ValueError:
                try:
                    lifetime = parse_duration(query_timeout)
                except ValueError as exc:
                    fail(f"Invalid --query-timeout: {exc}")
        agent = agent_options(serf_rpc_addr, rpc_auth, timeout)
        data = payload.encode("utf-8", "surrogateescape") if payload is not None else b""
        acks: list[str] = []
        responses: dict[str, str] = {}

        async def ask(client: SerfClient) -> None:
            async with client.query(
                name,
                data,
                filter_nodes=node or (),
                filter_tags=tags,
                request_ack=not no_ack,
                relay_factor=relay_factor,
                timeout=lifetime,
            ) as replies:
                if not as_json:
                    echo(f"Query '{name}' dispatched")
                async for reply in replies:
                    if isinstance(reply, QueryAck):
                        acks.append(reply.from_node)
                        if not as_json:
                            echo(f"Ack from '{reply.from_node}'")
                        continue
                    text = reply.payload.decode("utf-8", "surrogateescape")
                    responses[reply.from_node] = text
                    if not as_json:
                        echo(f"Response from '{reply.from_node}': {text.removesuffix(chr(10))}")

        run_serf_client(agent, ask, "Error sending query")
        if as_json:
            print_json({"Acks": acks, "Responses": responses})
            return
        if not no_ack:
            echo(f"Total Acks: {len(acks)}")
        echo(f"Total Responses: {len(responses)}")


__all__ = ["register"]
