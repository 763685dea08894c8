"""The ``agentrpc`` command line: ``serve`` runs an agent, the rest drive one over RPC.

Texts and exit codes follow the reference CLI: errors go to stderr with exit 1 and never a
traceback for an expected failure; ``members`` exits 2 when no member matches.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import trio
import typer

from ..agent import Agent, AgentStartError
from ..client import AgentConnectionError, Client, ClientError, RPCError
from ..config import AgentConfig, ConfigError, load_config
from ..defaults import (
    DEFAULT_RPC_ADDR,
    DEFAULT_SERF_LAN_ADDR,
    DEFAULT_SERF_WAN_ADDR,
    DEFAULT_SERVER_ADDR,
)
from ..protocol.bodies import Member
from ..transports import AddressError
from . import proxy_command

T = TypeVar("T")

ENV_RPC_ADDR = "AGENTRPC_RPC_ADDR"
ENV_RPC_TOKEN = "AGENTRPC_RPC_TOKEN"

app = typer.Typer(
    name="agentrpc",
    help="A cluster agent speaking the Consul/Serf agent RPC protocol, and its CLI.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
)

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


def echo(text: str, *, err: bool = False) -> None:
    """``typer.echo`` for text that may carry names from the wire.

    A name that is not UTF-8 arrives holding lone surrogates (the codec decodes with
    surrogateescape), which a strict UTF-8 stream refuses. Such a line is written as bytes:
    the name's original bytes, as the Go CLI prints them (on stdout and stderr alike); where
    the stream has no byte buffer, or its encoding cannot hold the rest of the text, as
    backslash escapes. Never a traceback."""
    stream = sys.stderr if err else sys.stdout
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        pass
    else:
        typer.echo(text, err=err)
        return
    line = text + "\n"
    if getattr(stream, "buffer", None) is not None:
        try:
            raw = line.encode(encoding, "surrogateescape")
        except UnicodeEncodeError:
            raw = line.encode(encoding, "backslashreplace")
        typer.echo(raw, nl=False, err=err)
    else:
        escaped = line.encode(encoding, "backslashreplace").decode(encoding)
        typer.echo(escaped, nl=False, err=err)


def fail(message: str, code: int = 1) -> NoReturn:
    echo(message, err=True)
    raise typer.Exit(code)


def run_client(
    rpc_addr: str, token: str, action: Callable[[Client], Awaitable[T]], error_prefix: str
) -> T:
    """Connect, handshake, run ``action``; turn expected failures into clean messages."""

    async def main() -> T:
        async with Client(rpc_addr, token=token) as client:
            return await action(client)

    try:
        return trio.run(main)
    except AddressError as exc:
        fail(f"Error connecting to agent: {exc}")
    except AgentConnectionError as exc:
        fail(f"Error connecting to agent: {exc}")
    except ClientError as exc:
        fail(f"{error_prefix}: {exc}")


def columnize(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, like the reference CLI's tables."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- serve


@app.command()
def serve(
    node: Annotated[
        str | None, typer.Option("--node", help="Node name (default: host name).")
    ] = None,
    datacenter: Annotated[
        str | None, typer.Option("--datacenter", help="Datacenter (default dc1).")
    ] = None,
    server: Annotated[
        bool | None,
        typer.Option("--server/--client", help="Server or client mode (default server)."),
    ] = None,
    rpc_addr: Annotated[
        str | None,
        typer.Option("--rpc-addr", help=f"RPC listen address (default {DEFAULT_RPC_ADDR})."),
    ] = None,
    serf_lan_addr: Annotated[
        str | None,
        typer.Option(
            "--serf-lan-addr", help=f"LAN gossip address (default {DEFAULT_SERF_LAN_ADDR})."
        ),
    ] = None,
    serf_wan_addr: Annotated[
        str | None,
        typer.Option(
            "--serf-wan-addr", help=f"WAN gossip address (default {DEFAULT_SERF_WAN_ADDR})."
        ),
    ] = None,
    server_addr: Annotated[
        str | None,
        typer.Option("--server-addr", help=f"Server port address (default {DEFAULT_SERVER_ADDR})."),
    ] = None,
    config_file: Annotated[
        list[Path] | None,
        typer.Option("--config-file", help="JSON or TOML config file; repeatable, in order."),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="TRACE, DEBUG, INFO, WARN or ERR.")
    ] = None,
) -> None:
    """Run an agent until it is told to leave (or gets SIGINT/SIGTERM); SIGHUP reloads."""
    overrides: dict[str, Any] = {
        "node_name": node,
        "datacenter": datacenter,
        "server": server,
        "rpc_addr": rpc_addr,
        "serf_lan_addr": serf_lan_addr,
        "serf_wan_addr": serf_wan_addr,
        "server_addr": server_addr,
        "log_level": log_level,
    }
    overrides = {key: value for key, value in overrides.items() if value is not None}
    try:
        config: AgentConfig = load_config(config_file or [], overrides)
    except ConfigError as exc:
        fail(f"Error loading configuration: {exc}")
    try:
        agent = Agent(config, overrides=overrides)  # resolves the serf hosts: may fail
        trio.run(lambda: agent.run(handle_signals=True))
    except AgentStartError as exc:
        fail(f"Error starting agent: {exc}")
    except KeyboardInterrupt:
        raise typer.Exit(1) from None


# ---------------------------------------------------------------------------------- members


def member_type(member: Member) -> str:
    return "server" if member.tags.get("role") == "consul" else "client"


@app.command()
def members(
    rpc_addr: RpcAddr = DEFAULT_RPC_ADDR,
    token: Token = "",
    wan: Annotated[bool, typer.Option("--wan", help="List the WAN pool.")] = False,
    detailed: Annotated[bool, typer.Option("--detailed", help="Show all tags.")] = False,
    status: Annotated[
        str, typer.Option("--status", help="Only members whose status matches this regexp.")
    ] = ".*",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the members of the LAN (or WAN) pool."""
    try:
        status_re = re.compile(status)
    except re.error as exc:
        fail(f"Failed to compile status regexp: {exc}")
    found = run_client(rpc_addr, token, lambda c: c.members(wan=wan), "Error retrieving members")
    found = sorted((m for m in found if status_re.search(m.status)), key=lambda m: m.name)
    if not found:
        raise typer.Exit(2)
    if as_json:
        # ensure_ascii (the default) keeps the output valid ASCII JSON: a name that was not
        # UTF-8 shows as \udcXX escapes, which json.loads turns back into the same str.
        echo(json.dumps([_member_json(m) for m in found], indent=2, ensure_ascii=True))
        return
    if detailed:
        rows = [["Node", "Address", "Status", "Tags"]]
        rows += [
            [m.name, m.address, m.status, ",".join(f"{k}={v}" for k, v in sorted(m.tags.items()))]
            for m in found
        ]
    else:
        rows = [["Node", "Address", "Status", "Type", "Build", "Protocol", "DC"]]
        rows += [
            [
                m.name,
                m.address,
                m.status,
                member_type(m),
                m.tags.get("build", "").split(":", 1)[0],
                m.tags.get("vsn", ""),
                m.tags.get("dc", ""),
            ]
            for m in found
        ]
    echo(columnize(rows))


def _member_json(member: Member) -> dict[str, Any]:
    return {
        "name": member.name,
        "addr": str(member.addr),
        "port": member.port,
        "address": member.address,
        "status": member.status,
        "type": member_type(member),
        "tags": member.tags,
        "protocol": [member.protocol_min, member.protocol_max, member.protocol_cur],
        "delegate": [member.delegate_min, member.delegate_max, member.delegate_cur],
    }


# ---------------------------------------------------------------------------------- join etc.


@app.command()
def join(
    addresses: Annotated[list[str] | None, typer.Argument(help="Addresses to join.")] = None,
    rpc_addr: RpcAddr = DEFAULT_RPC_ADDR,
    token: Token = "",
    wan: Annotated[bool, typer.Option("--wan", help="Join the WAN pool (servers only).")] = False,
) -> None:
    """Tell the agent to join a cluster through one or more addresses."""
    if not addresses:
        fail("At least one address to join must be specified.")
    existing = list(addresses)
    num = run_client(
        rpc_addr, token, lambda c: c.join(existing, wan=wan), "Error joining the cluster"
    )
    echo(f"Successfully joined cluster by contacting {num} nodes.")


@app.command("force-leave")
def force_leave(
    nodes: Annotated[list[str] | None, typer.Argument(help="The failed node.")] = None,
    rpc_addr: RpcAddr = DEFAULT_RPC_ADDR,
    token: Token = "",
) -> None:
    """Force a failed node into the left state."""
    if not nodes or len(nodes) != 1:
        fail("A node name must be specified to force leave.")
    node = nodes[0]
    run_client(rpc_addr, token, lambda c: c.force_leave(node), "Error force leaving")


@app.command()
def leave(rpc_addr: RpcAddr = DEFAULT_RPC_ADDR, token: Token = "") -> None:
    """Gracefully leave the cluster and shut the agent down."""
    run_client(rpc_addr, token, lambda c: c.leave(), "Error leaving")
    echo("Graceful leave complete")


@app.command()
def reload(rpc_addr: RpcAddr = DEFAULT_RPC_ADDR, token: Token = "") -> None:
    """Reload the agent's configuration files."""
    run_client(rpc_addr, token, lambda c: c.reload(), "Error reloading")
    echo("Configuration reload triggered")


@app.command()
def info(rpc_addr: RpcAddr = DEFAULT_RPC_ADDR, token: Token = "") -> None:
    """Show the agent's debugging statistics."""
    sections = run_client(rpc_addr, token, lambda c: c.stats(), "Error querying agent")
    lines = []
    for section in sorted(sections):
        lines.append(f"{section}:")
        for key, value in sorted(sections[section].items()):
            lines.append(f"\t{key} = {value}")
    echo("\n".join(lines))


REMOTE_ENDED = (
    "Remote side ended the monitor! This usually means that the\nremote side has exited or crashed."
)


@app.command()
def monitor(
    rpc_addr: RpcAddr = DEFAULT_RPC_ADDR,
    token: Token = "",
    log_level: Annotated[
        str, typer.Option("--log-level", help="Lowest level to stream (default INFO).")
    ] = "INFO",
) -> None:
    """Stream the agent's log until Ctrl-C (which stops the stream cleanly)."""

    async def stream(client: Client) -> bool:
        interrupted = False
        refused: RPCError | None = None
        async with trio.open_nursery() as nursery:

            async def watch_interrupt() -> None:
                nonlocal interrupted
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        interrupted = True
                        nursery.cancel_scope.cancel()

            nursery.start_soon(watch_interrupt)
            try:
                async with client.monitor(log_level) as lines:
                    async for line in lines:
                        echo(line)
            except RPCError as exc:
                # Raised here it would leave the nursery wrapped in an exception group, past
                # run_client's clean message (a traceback for ``--log-level bogus``).
                refused = exc
            nursery.cancel_scope.cancel()
        if refused is not None:
            raise refused
        return interrupted

    interrupted = run_client(rpc_addr, token, stream, "Error starting monitor")
    if not interrupted:
        fail(REMOTE_ENDED)


proxy_command.register(app)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=list(argv) if argv is not None else None, prog_name="agentrpc")


if __name__ == "__main__":
    main()
