"""The ``agentrpc`` command line: ``serve`` runs an agent, the rest drive one over RPC.

Texts and exit codes follow the reference CLI: an expected failure is one line on stderr and
exit status 1, never a traceback; ``members`` exits 2 when no member matches; Ctrl-C ends
``monitor``, ``proxy`` and ``serve`` with 0, any other command with 130. Consul's single-dash
spellings (``-wan``, ``-rpc-addr=X``) are accepted beside ours (see :mod:`.argv`). Every
command that prints data has ``--json``: stable, labelled fields, ``[]`` for none.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import trio
import typer

from ..client import DEFAULT_TIMEOUT, Client
from ..client_errors import AgentGoneError, ClientError, JoinError, RPCError
from ..defaults import DEFAULT_RPC_ADDR
from ..log_protocol import LOG_LEVELS
from ..protocol.bodies import Member
from ..protocol.constants import ERR_UNKNOWN_LOG_LEVEL
from . import (
    catalog_command,
    event_command,
    keyring_command,
    kv_command,
    operator_command,
    proxy_command,
    rtt_command,
    serve_command,
)
from .agent_options import (
    ENV_RPC_TIMEOUT as ENV_RPC_TIMEOUT,
    AgentOptions as AgentOptions,
    AsJson,
    RpcAddr,
    Timeout,
    Token,
    agent_options,
    columnize,
    fail_client as fail_client,
    print_json,
    run_client,
)
from .argv import normalise, options_of
from .common import EXIT_INTERRUPTED, echo, fail, one_line

app = typer.Typer(
    name="agentrpc",
    help="A cluster agent speaking the Consul/Serf agent RPC protocol, and its CLI.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
)

# ---------------------------------------------------------------------------------- members


def member_type(member: Member) -> str:
    return "server" if member.tags.get("role") == "consul" else "client"


def member_json(member: Member) -> dict[str, Any]:
    """One member, labelled: ``addr`` is ``ip:port`` as serf's ``members -format json``."""
    return {
        "name": member.name,
        "addr": member.address,
        "ip": str(member.addr),
        "port": member.port,
        "status": member.status,
        "type": member_type(member),
        "build": member.tags.get("build", "").split(":", 1)[0],
        "dc": member.tags.get("dc", ""),
        "tags": member.tags,
        "protocol": {
            "min": member.protocol_min,
            "max": member.protocol_max,
            "version": member.protocol_cur,
        },
        "delegate": {
            "min": member.delegate_min,
            "max": member.delegate_max,
            "version": member.delegate_cur,
        },
    }


@app.command()
def members(
    rpc_addr: RpcAddr = DEFAULT_RPC_ADDR,
    token: Token = "",
    timeout: Timeout = DEFAULT_TIMEOUT,
    wan: Annotated[bool, typer.Option("--wan", help="List the WAN pool.")] = False,
    detailed: Annotated[bool, typer.Option("--detailed", help="Show all tags.")] = False,
    status: Annotated[
        str, typer.Option("--status", help="Only members whose status matches this regexp.")
    ] = ".*",
    as_json: AsJson = False,
    output_format: Annotated[
        str, typer.Option("--format", help="text or json (json: the same as --json).")
    ] = "text",
) -> None:
    """List the members of the LAN (or WAN) pool; exit 2 when none matches --status."""
    if output_format not in ("text", "json"):
        fail(f"Invalid --format {output_format!r}: use text or json.")
    try:
        status_re = re.compile(status)
    except re.error as exc:
        fail(f"Failed to compile status regexp: {exc}")
    agent = agent_options(rpc_addr, token, timeout)
    found = run_client(agent, lambda c: c.members(wan=wan), "Error retrieving members")
    found = sorted((m for m in found if status_re.search(m.status)), key=lambda m: m.name)
    if as_json or output_format == "json":
        print_json([member_json(m) for m in found])
        if not found:
            raise typer.Exit(2)
        return
    if not found:
        raise typer.Exit(2)
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


# ---------------------------------------------------------------------------------- join

_FAILED_TO = re.compile(r"^(?:\* )?Failed to (?:join|resolve) (.+?): (.*)$")
_DIALED = re.compile(r"^dial tcp \S+: connect: ")
"""The ``net.Dial`` wording memberlist passes on: its address is the one the line names."""


def join_reasons(error: str) -> list[str] | None:
    """The reasons in a join error of the reference's form (``N error(s) occurred: * Failed to
    join HOST: reason``), without the host (memberlist names the IP alone; we know the
    address) and without the dial's ``dial tcp HOST:PORT: connect:`` (the same address again);
    None for any other error (``Must be a server to join WAN cluster``)."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    if not lines or not re.match(r"^\d+ error\(s\) occurred:$", lines[0]):
        return None
    reasons = []
    for line in lines[1:]:
        match = _FAILED_TO.match(line)
        reasons.append(_DIALED.sub("", match.group(2)) if match else line.removeprefix("* "))
    return reasons


@dataclass(frozen=True, slots=True)
class _Joined:
    address: str
    num: int = 0
    error: str = ""


async def _join_each(client: Client, addresses: Sequence[str], wan: bool) -> list[_Joined]:
    """One join per address, all at once, so that each failure is told with its address.
    Any error but a join's (the agent went away, a token) is raised, unwrapped."""
    results: list[_Joined | None] = [None] * len(addresses)
    raised: list[ClientError] = []

    async def join_one(index: int, address: str) -> None:
        try:
            results[index] = _Joined(address, await client.join([address], wan=wan))
        except JoinError as exc:
            results[index] = _Joined(address, exc.num, exc.error)
        except ClientError as exc:
            raised.append(exc)

    async with trio.open_nursery() as nursery:
        for index, address in enumerate(addresses):
            nursery.start_soon(join_one, index, address)
    if raised:
        raise raised[0]
    return [result for result in results if result is not None]


@app.command()
def join(
    addresses: Annotated[list[str] | None, typer.Argument(help="Addresses to join.")] = None,
    rpc_addr: RpcAddr = DEFAULT_RPC_ADDR,
    token: Token = "",
    timeout: Timeout = DEFAULT_TIMEOUT,
    wan: Annotated[bool, typer.Option("--wan", help="Join the WAN pool (servers only).")] = False,
    as_json: AsJson = False,
) -> None:
    """Tell the agent to join a cluster through one or more gossip addresses.

    Each address that fails is reported with its reason; the join succeeds when one answers."""
    if not addresses:
        fail("At least one address to join must be specified.")
    wanted = list(dict.fromkeys(addresses))
    agent = agent_options(rpc_addr, token, timeout)
    results = run_client(agent, lambda c: _join_each(c, wanted, wan), "Error joining the cluster")
    failed: list[tuple[str, str]] = []
    for result in results:
        if not result.error:
            continue
        reasons = join_reasons(result.error)
        if reasons is None:  # not about this address: the same for all of them
            fail(f"Error joining the cluster: {result.error}")
        failed.append((result.address, "; ".join(reasons) or result.error))
    num = sum(result.num for result in results if not result.error)
    if as_json:
        print_json(
            {"num": num, "failed": [{"address": a, "error": one_line(e)} for a, e in failed]}
        )
    described = "; ".join(f"Failed to join {address}: {reason}" for address, reason in failed)
    if num == 0:
        fail(f"Error joining the cluster: {described}")
    for address, reason in failed:
        echo(one_line(f"Failed to join {address}: {reason}"), err=True)
    if not as_json:
        echo(f"Successfully joined cluster by contacting {num} nodes.")


# ---------------------------------------------------------------------------------- force-leave


def _known(name: str, found: Sequence[Member]) -> bool:
    """Whether ``name`` is a member, by its LAN name or its WAN name (``name.dc``)."""
    return any(m.name == name or m.name.rsplit(".", 1)[0] == name for m in found)


@app.command("force-leave")
def force_leave(
    nodes: Annotated[list[str] | None, typer.Argument(help="The failed node.")] = None,
    rpc_addr: RpcAddr = DEFAULT_RPC_ADDR,
    token: Token = "",
    timeout: Timeout = DEFAULT_TIMEOUT,
    prune: Annotated[bool, typer.Option("--prune", hidden=True)] = False,
) -> None:
    """Force a failed node into the left state."""
    if prune:
        fail(
            "force-leave --prune is not supported: the agent RPC has no prune (as Consul "
            "0.7's); a node forced to leave is forgotten after tombstone_timeout."
        )
    if not nodes or len(nodes) != 1:
        fail("A node name must be specified to force leave.")
    node = nodes[0]
    agent = agent_options(rpc_addr, token, timeout)

    async def action(client: Client) -> bool:
        found = await client.members_lan() + await client.members_wan()
        if not _known(node, found):
            return False
        await client.force_leave(node)
        return True

    if not run_client(agent, action, "Error force leaving"):
        fail(
            f"Error force leaving: no member named '{node}' is known to the agent "
            "(`agentrpc members` and `agentrpc members --wan` list them)."
        )


# ---------------------------------------------------------------------------------- the rest


@app.command()
def leave(
    rpc_addr: RpcAddr = DEFAULT_RPC_ADDR,
    token: Token = "",
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> None:
    """Gracefully leave the cluster and shut the agent down."""
    agent = agent_options(rpc_addr, token, timeout)
    run_client(agent, lambda c: c.leave(), "Error leaving")
    echo("Graceful leave complete")


@app.command()
def reload(
    rpc_addr: RpcAddr = DEFAULT_RPC_ADDR,
    token: Token = "",
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> None:
    """Reload the agent's configuration files."""
    agent = agent_options(rpc_addr, token, timeout)
    run_client(agent, lambda c: c.reload(), "Error reloading")
    echo("Configuration reload triggered")


@app.command()
def info(
    rpc_addr: RpcAddr = DEFAULT_RPC_ADDR,
    token: Token = "",
    timeout: Timeout = DEFAULT_TIMEOUT,
    as_json: AsJson = False,
) -> None:
    """Show the agent's debugging statistics."""
    agent = agent_options(rpc_addr, token, timeout)
    sections = run_client(agent, lambda c: c.stats(), "Error querying agent")
    if as_json:
        print_json(sections)
        return
    lines = []
    for section in sorted(sections):
        lines.append(f"{section}:")
        for key, value in sorted(sections[section].items()):
            lines.append(f"\t{key} = {value}")
    echo("\n".join(lines))


REMOTE_ENDED = (
    "Remote side ended the monitor! This usually means that the remote side has exited or crashed."
)


@app.command()
def monitor(
    rpc_addr: RpcAddr = DEFAULT_RPC_ADDR,
    token: Token = "",
    timeout: Timeout = DEFAULT_TIMEOUT,
    log_level: Annotated[
        str, typer.Option("--log-level", help=f"Lowest level: {', '.join(LOG_LEVELS)}.")
    ] = "INFO",
) -> None:
    """Stream the agent's log until Ctrl-C (which stops the stream cleanly and exits 0)."""
    agent = agent_options(rpc_addr, token, timeout)

    async def stream(client: Client) -> bool:
        interrupted = False
        failure: ClientError | None = None
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
            except ClientError as exc:
                # Raised here it would leave the nursery wrapped in an exception group.
                failure = exc
            nursery.cancel_scope.cancel()
        if interrupted:
            return True
        if isinstance(failure, RPCError) and failure.error.startswith(ERR_UNKNOWN_LOG_LEVEL):
            raise RPCError(f"{failure.error} (the levels: {', '.join(LOG_LEVELS)})")
        if failure is not None and not isinstance(failure, AgentGoneError):
            raise failure
        return False

    if not run_client(agent, stream, "Error starting monitor"):
        fail(REMOTE_ENDED)


# ---------------------------------------------------------------------------------- version


def human_version() -> str:
    """The version as Consul's ``GetHumanVersion`` shapes it: ``v0.1.0-dev (revision)``."""
    from .. import build_info

    text = f"v{build_info.VERSION}"
    if build_info.PRERELEASE:
        text += f"-{build_info.PRERELEASE}"
        if build_info.REVISION and build_info.REVISION != "unknown":
            text += f" ({build_info.REVISION})"
    return text


@app.command()
def version(as_json: AsJson = False) -> None:
    """Print the version and the protocol versions understood (also --version)."""
    from .. import build_info
    from ..agent import CONSUL_PROTOCOL, CONSUL_PROTOCOL_MAX, CONSUL_PROTOCOL_MIN

    if as_json:
        print_json(
            {
                "version": build_info.VERSION,
                "prerelease": build_info.PRERELEASE,
                "revision": build_info.REVISION,
                "human": human_version(),
                "protocol": {
                    "default": CONSUL_PROTOCOL,
                    "min": CONSUL_PROTOCOL_MIN,
                    "max": CONSUL_PROTOCOL_MAX,
                },
            }
        )
        return
    echo(f"agentrpc {human_version()}")
    supplement = ""
    if CONSUL_PROTOCOL < CONSUL_PROTOCOL_MAX:
        supplement = (
            f" (agent will automatically use protocol >{CONSUL_PROTOCOL} when speaking to "
            "compatible agents)"
        )
    echo(
        f"Protocol {CONSUL_PROTOCOL} spoken by default, understands {CONSUL_PROTOCOL_MIN} to "
        f"{CONSUL_PROTOCOL_MAX}{supplement}"
    )


serve_command.register(app)
proxy_command.register(app)
keyring_command.register(app)
event_command.register(app)
rtt_command.register(app)
app.add_typer(kv_command.app, name="kv")
app.add_typer(catalog_command.app, name="catalog")
app.add_typer(operator_command.app, name="operator")


# ---------------------------------------------------------------------------------- main


def _command_options() -> dict[str, Any]:
    """Each command's long options; a group's (``agentrpc kv get``) are its own and all its
    subcommands' together, which is enough to spell Consul's flags after any of them."""
    commands = getattr(typer.main.get_command(app), "commands", {})
    options: dict[str, Any] = {}
    for name, command in commands.items():
        merged = options_of(command)
        for subcommand in getattr(command, "commands", {}).values():
            merged.update(options_of(subcommand))
        options[name] = merged
    return options


def _usage_errors() -> tuple[type[Exception], ...]:
    """The classes of click's usage errors (bad flags, bad values): typer's own where it
    vendors click (0.2x releases), else click's."""
    found: list[type[Exception]] = []
    vendored = getattr(typer, "TyperException", None)
    if isinstance(vendored, type) and issubclass(vendored, Exception):
        found.append(vendored)
    try:
        import click
    except ImportError:
        pass
    else:
        found.append(click.ClickException)
    return tuple(found)


def _is_broken_pipe(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return all(_is_broken_pipe(inner) for inner in error.exceptions)
    return isinstance(error, OSError) and error.errno == errno.EPIPE


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: Consul's spellings normalised, click's usage errors as one
    line (exit 1), a closed stdout (``agentrpc monitor | head``) ends quietly."""
    args = normalise(list(sys.argv[1:] if argv is None else argv), _command_options())
    command = args[0] if args and not args[0].startswith("-") else ""
    try:
        code = app(args=args, prog_name="agentrpc", standalone_mode=False)
    except _usage_errors() as exc:
        context = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and context is not None:
            echo(context.get_help())  # `agentrpc` alone: the help, as --help
            code = 0
        else:
            where = f"agentrpc {command} --help" if command else "agentrpc --help"
            format_message = getattr(exc, "format_message", None)
            message = format_message() if callable(format_message) else str(exc)
            echo(one_line(f"Error: {message} (see `{where}`)"), err=True)
            code = 1
    except typer.Abort:
        code = EXIT_INTERRUPTED
    except BaseException as error:
        if not _is_broken_pipe(error):
            raise
        _silence_stdout()
        code = 1
    raise SystemExit(code if isinstance(code, int) else 0)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of a closed pipe does
    not print a complaint."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    main()
