"""``agentrpc proxy``: a plain local port in front of one protocol of an agent's server port.

Registered on the main app by ``register(app)``.
"""

from __future__ import annotations

import sys
from typing import Annotated

import trio
import typer

from ..defaults import DEFAULT_SERVER_ADDR, SERVER_PORT
from ..serverport.proxy import PROTOCOLS, serve_proxy
from ..transports import AddressError, parse_address


def register(app: typer.Typer) -> None:
    """Add the ``proxy`` command to ``app``."""

    @app.command("proxy")
    def proxy(
        protocol: Annotated[
            str,
            typer.Option(
                "--protocol", help=f"Protocol to proxy to: {', '.join(sorted(PROTOCOLS))}."
            ),
        ] = "rpc",
        server_addr: Annotated[
            str, typer.Option("--server-addr", help="The agent's server port (HOST:PORT).")
        ] = DEFAULT_SERVER_ADDR,
        listen_addr: Annotated[
            str, typer.Option("--listen-addr", help="Where to listen (port 0: a free port).")
        ] = "127.0.0.1:0",
    ) -> None:
        """Proxy plain connections to one protocol of a server port (for developer tools)."""
        type_byte = PROTOCOLS.get(protocol)
        if type_byte is None:
            typer.echo(
                f"Unknown protocol {protocol!r}; known: {', '.join(sorted(PROTOCOLS))}", err=True
            )
            raise typer.Exit(1)
        try:
            server = parse_address(server_addr, default_port=SERVER_PORT)
            listen = parse_address(listen_addr)
        except AddressError as exc:
            typer.echo(f"Invalid address: {exc}", err=True)
            raise typer.Exit(1) from None
        if server.kind != "tcp" or listen.kind != "tcp":
            typer.echo("The proxy needs TCP addresses (HOST:PORT)", err=True)
            raise typer.Exit(1)

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(
                    lambda task_status: serve_proxy(
                        server, type_byte, listen=listen, task_status=task_status
                    )
                )
                print(f"Proxying connections to the {protocol} protocol of {server}")
                print(f"Use this address: {bound}")
                sys.stdout.flush()

        try:
            trio.run(main)
        except OSError as exc:
            typer.echo(f"Error starting the proxy: {exc}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            raise typer.Exit(0) from None
