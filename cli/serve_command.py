"""``agentrpc serve``: run an agent until it is told to leave, or gets SIGINT/SIGTERM.

Registered on the main app by ``register(app)``. Flags override the config files; the RPC
address falls back to ``$AGENTRPC_RPC_ADDR`` when neither a flag nor a file sets it, so that
``serve`` and the other commands of one shell meet at the same address. The start-up joins
(``--join``, ``--retry-join`` and their WAN twins) and the leave on a signal follow Consul's
agent command. Every failure to start is one line; when addresses are already in use, the
line names all of them.

Consul's HTTP API (``127.0.0.1:8500``) and DNS interface (``127.0.0.1:8600``) are on by
default, as Consul's: ``--http-addr ""`` / ``--dns-addr ""`` (or ``"http_addr": ""`` in a
config file) turn them off, and so do Consul's ``-http-port=-1`` / ``-dns-port=-1``.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer

from ..client import ENV_RPC_ADDR
from ..defaults import (
    DEFAULT_DNS_ADDR,
    DEFAULT_HTTP_ADDR,
    DEFAULT_RPC_ADDR,
    DEFAULT_SERF_LAN_ADDR,
    DEFAULT_SERF_WAN_ADDR,
    DEFAULT_SERVER_ADDR,
)
from ..hostport import join_host_port
from ..transports import AddressError, parse_address
from .common import fail, one_line, run_trio

if TYPE_CHECKING:
    from ..agent import AgentStartError
    from ..config import AgentConfig

# The agent and its config are imported by `serve` itself: the other commands start faster
# without them (the gossip and server-port layers take most of a second to import).

ADDRESS_FLAGS: Final = (
    "--rpc-addr, --server-addr, --serf-lan-addr, --serf-wan-addr, --http-addr, --dns-addr"
)
OFF_HINT: Final = '; --http-addr "" and --dns-addr "" turn the HTTP API and DNS off'
"""Added to the busy-address line when the HTTP or the DNS address is among the busy ones
(the ports a second agent on one host most often collides on, being on by default)."""


def seconds(flag: str, text: str | None) -> float | None:
    """A flag's interval: seconds (``30``, ``0.5``) or a Go duration (``30s``, ``1m``)."""
    from ..config import parse_duration

    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_duration(text)
    except ValueError as exc:
        fail(f"Invalid {flag}: {exc}")


def files_set(files: list[Path], key: str) -> bool:
    """Whether one of the config files sets ``key`` (a broken file is reported later, by
    :func:`load_config`, in the usual words)."""
    from ..config import ConfigError, read_config_file

    for path in files:
        try:
            if key in read_config_file(path):
                return True
        except ConfigError:
            return False
    return False


def port_overrides(
    config: AgentConfig, http_port: int | None, dns_port: int | None
) -> dict[str, str]:
    """The ``http_addr`` / ``dns_addr`` that Consul's ``-http-port`` / ``-dns-port`` make of
    the loaded ones: "" (off) for a negative port, as Consul's ``-1``; else the same host (the
    default's when the address was off) with that port (0 picks a free one, as everywhere)."""
    made: dict[str, str] = {}
    for flag, key, default, port in (
        ("--http-port", "http_addr", DEFAULT_HTTP_ADDR, http_port),
        ("--dns-port", "dns_addr", DEFAULT_DNS_ADDR, dns_port),
    ):
        if port is None:
            continue
        if port < 0:
            made[key] = ""
            continue
        if port > 65535:
            fail(f"Invalid {flag}: {port} is not a port (0-65535, or -1 for off)")
        current = getattr(config, key) or default
        try:
            address = parse_address(current)
        except AddressError as exc:  # load_config checked it already: not expected
            fail(f"Error loading configuration: {key}: {exc}")
        if address.kind != "tcp":
            fail(f"Invalid {flag}: {key} {current} has no port to replace")
        made[key] = join_host_port(address.host, port)
    return made


def _in_use(host: str, port: int, kind: int) -> bool:
    """Whether binding ``host:port`` (TCP or UDP) fails because something holds it."""
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=kind)[0]
    except (OSError, IndexError):
        return False
    with socket.socket(family, kind) as probe:
        if kind == socket.SOCK_STREAM:
            # As the listeners do, so that connections in TIME_WAIT do not count.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def busy_addresses(config: AgentConfig) -> list[str]:
    """The configured addresses something else already holds, named as the flags name them."""
    checks: list[tuple[str, str, tuple[int, ...]]] = [
        ("RPC", config.rpc_addr, (socket.SOCK_STREAM,))
    ]
    if config.server:
        checks.append(("server port", config.server_addr, (socket.SOCK_STREAM,)))
    if config.serf_rpc_addr:
        checks.append(("Serf RPC", config.serf_rpc_addr, (socket.SOCK_STREAM,)))
    both = (socket.SOCK_STREAM, socket.SOCK_DGRAM)
    if config.dns_addr:
        checks.append(("DNS", config.dns_addr, both))
    if config.http_addr:
        checks.append(("HTTP", config.http_addr, (socket.SOCK_STREAM,)))
    checks.append(("serf LAN", config.serf_lan_addr, both))
    if config.server:
        checks.append(("serf WAN", config.serf_wan_addr, both))
    busy = []
    for label, text, kinds in checks:
        try:
            address = parse_address(text)
        except AddressError:
            continue
        if address.kind != "tcp" or address.port == 0:
            continue
        if any(_in_use(address.host, address.port, kind) for kind in kinds):
            busy.append(f"{label} {address}")
    return busy


def _address_in_use(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno == errno.EADDRINUSE:
            return True
        seen = seen.__cause__ or seen.__context__
    return "address already in use" in str(exc).lower()


def start_failure(exc: AgentStartError, config: AgentConfig) -> str:
    """The one line for an agent that could not start: every busy address at once."""
    if _address_in_use(exc):
        busy = busy_addresses(config)
        if busy:
            off = OFF_HINT if any(b.startswith(("HTTP ", "DNS ")) for b in busy) else ""
            return (
                f"Error starting agent: address already in use: {', '.join(busy)}; is another "
                f"agent running? Stop it, or choose other addresses ({ADDRESS_FLAGS}; "
                f"port 0 picks a free one{off})"
            )
    return f"Error starting agent: {exc}"


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to ``app``."""

    @app.command()
    def serve(
        node: Annotated[
            str | None, typer.Option("--node", help="Node name (default: host name).")
        ] = None,
        datacenter: Annotated[
            str | None, typer.Option("--datacenter", "--dc", help="Datacenter (default dc1).")
        ] = None,
        server: Annotated[
            bool | None,
            typer.Option("--server/--client", help="Server or client mode (default server)."),
        ] = None,
        rpc_addr: Annotated[
            str | None,
            typer.Option(
                "--rpc-addr",
                help=f"RPC listen address (default ${ENV_RPC_ADDR}, else {DEFAULT_RPC_ADDR}).",
            ),
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
            typer.Option(
                "--server-addr", help=f"Server port address (default {DEFAULT_SERVER_ADDR})."
            ),
        ] = None,
        config_file: Annotated[
            list[Path] | None,
            typer.Option("--config-file", help="JSON or TOML config file; repeatable, in order."),
        ] = None,
        log_level: Annotated[
            str | None, typer.Option("--log-level", help="TRACE, DEBUG, INFO, WARN or ERR.")
        ] = None,
        join: Annotated[
            list[str] | None,
            typer.Option("--join", help="LAN gossip address to join at start; repeatable."),
        ] = None,
        join_wan: Annotated[
            list[str] | None,
            typer.Option("--join-wan", help="WAN gossip address to join at start; repeatable."),
        ] = None,
        retry_join: Annotated[
            list[str] | None,
            typer.Option(
                "--retry-join", help="LAN address to join at start, retrying; repeatable."
            ),
        ] = None,
        retry_join_wan: Annotated[
            list[str] | None,
            typer.Option(
                "--retry-join-wan", help="WAN address to join at start, retrying; repeatable."
            ),
        ] = None,
        retry_interval: Annotated[
            str | None,
            typer.Option("--retry-interval", help="Between join attempts (30s, or seconds)."),
        ] = None,
        retry_interval_wan: Annotated[
            str | None,
            typer.Option("--retry-interval-wan", help="Between WAN join attempts (30s)."),
        ] = None,
        retry_max: Annotated[
            int | None,
            typer.Option("--retry-max", help="Failed join attempts before exiting (0: never)."),
        ] = None,
        retry_max_wan: Annotated[
            int | None,
            typer.Option("--retry-max-wan", help="The same for the WAN joins (0: never)."),
        ] = None,
        data_dir: Annotated[
            str | None,
            typer.Option(
                "--data-dir",
                help="Where the agent keeps its state (Raft under raft/, the keyrings under "
                "serf/; default: $XDG_DATA_HOME/agentrpc/DC/NODE).",
            ),
        ] = None,
        dev: Annotated[
            bool | None,
            typer.Option(
                "--dev",
                help="Development mode: keep everything in memory (no data directory).",
            ),
        ] = None,
        bootstrap_expect: Annotated[
            int | None,
            typer.Option(
                "--bootstrap-expect",
                help="Servers to wait for before bootstrapping Raft (default 1: a lone "
                "server elects itself; 3 or 5 for a cluster, the same on every server).",
            ),
        ] = None,
        bootstrap: Annotated[
            bool | None,
            typer.Option("--bootstrap", help="Bootstrap mode: the same as --bootstrap-expect 1."),
        ] = None,
        encrypt: Annotated[
            str | None,
            typer.Option(
                "--encrypt",
                help="Base64 gossip key (a keyring file in --data-dir, when present, wins).",
                show_default=False,
            ),
        ] = None,
        dns_addr: Annotated[
            str | None,
            typer.Option(
                "--dns-addr",
                help=f"Answer Consul's DNS interface here, UDP and TCP (default "
                f'{DEFAULT_DNS_ADDR}, as Consul\'s; "" for none).',
            ),
        ] = None,
        dns_port: Annotated[
            int | None,
            typer.Option(
                "--dns-port",
                help="Consul's -dns-port: the DNS port on the --dns-addr host; -1 for none.",
            ),
        ] = None,
        domain: Annotated[
            str | None,
            typer.Option("--domain", help="The DNS domain to answer for (default consul.)."),
        ] = None,
        http_addr: Annotated[
            str | None,
            typer.Option(
                "--http-addr",
                help=f"Serve Consul's HTTP API here (kv, catalog, agent, ...; default "
                f'{DEFAULT_HTTP_ADDR}, as Consul\'s; "" for none).',
            ),
        ] = None,
        http_port: Annotated[
            int | None,
            typer.Option(
                "--http-port",
                help="Consul's -http-port: the HTTP port on the --http-addr host; -1 for none.",
            ),
        ] = None,
        serf_rpc_addr: Annotated[
            str | None,
            typer.Option(
                "--serf-rpc-addr",
                help="Listen for Serf's own agent RPC here (the serf CLI's 127.0.0.1:7373).",
            ),
        ] = None,
        serf_rpc_auth: Annotated[
            str | None,
            typer.Option(
                "--serf-rpc-auth",
                help="Key Serf RPC clients must send with auth first.",
                show_default=False,
            ),
        ] = None,
    ) -> None:
        """Run an agent until it is told to leave (or gets SIGINT/SIGTERM); SIGHUP reloads.

        On SIGINT or SIGTERM a client leaves the cluster gracefully first and a server does
        not, Consul's defaults (config: skip_leave_on_interrupt, leave_on_terminate)."""
        from ..agent import Agent, AgentStartError
        from ..config import ConfigError, default_data_dir, load_config

        files = config_file or []
        overrides: dict[str, Any] = {
            "node_name": node,
            "datacenter": datacenter,
            "server": server,
            "rpc_addr": rpc_addr,
            "serf_lan_addr": serf_lan_addr,
            "serf_wan_addr": serf_wan_addr,
            "server_addr": server_addr,
            "log_level": log_level,
            "start_join": tuple(join) if join else None,
            "start_join_wan": tuple(join_wan) if join_wan else None,
            "retry_join": tuple(retry_join) if retry_join else None,
            "retry_join_wan": tuple(retry_join_wan) if retry_join_wan else None,
            "retry_interval": seconds("--retry-interval", retry_interval),
            "retry_interval_wan": seconds("--retry-interval-wan", retry_interval_wan),
            "retry_max": retry_max,
            "retry_max_wan": retry_max_wan,
            "data_dir": data_dir,
            "dev": dev,
            "bootstrap_expect": 1 if bootstrap else bootstrap_expect,
            "encrypt": encrypt,
            "serf_rpc_addr": serf_rpc_addr,
            "serf_rpc_auth": serf_rpc_auth,
            "dns_addr": dns_addr,
            "domain": domain,
            "http_addr": http_addr,
        }
        overrides = {key: value for key, value in overrides.items() if value is not None}
        from_env = os.environ.get(ENV_RPC_ADDR, "").strip()
        if "rpc_addr" not in overrides and from_env and not files_set(files, "rpc_addr"):
            overrides["rpc_addr"] = from_env
        if bootstrap and bootstrap_expect not in (None, 1):
            fail("Error: --bootstrap and --bootstrap-expect cannot be given together")
        try:
            config = load_config(files, overrides)
            ports = port_overrides(config, http_port, dns_port)
            if ports:
                overrides.update(ports)  # an override, so that a reload keeps it
                config = load_config(files, overrides)
            if not config.dev and not config.data_dir:
                # Nothing said where: the node's own directory in the user's data directory
                # (an override, so that a reload keeps it).
                overrides["data_dir"] = default_data_dir(config, os.environ)
                config = load_config(files, overrides)
        except ConfigError as exc:
            fail(f"Error loading configuration: {exc}")
        try:
            agent = Agent(config, overrides=overrides)  # resolves the serf hosts: may fail
        except AgentStartError as exc:
            fail(f"Error starting agent: {one_line(str(exc))}")

        async def main() -> None:
            await agent.run(handle_signals=True)

        try:
            run_trio(main)
        except AgentStartError as exc:
            fail(start_failure(exc, config))
        if agent.stop_error:
            fail(f"Error: {agent.stop_error}; the agent shut down without leaving the cluster")
