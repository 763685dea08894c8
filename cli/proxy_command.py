"""``agentrpc proxy``: a plain local port in front of one protocol of an agent's server port.

Registered on the main app by ``register(app)``.
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import trio
import typer

from ..defaults import DEFAULT_SERVER_ADDR, SERVER_PORT
from ..serverport.proxy import PROTOCOLS, serve_proxy
from ..transports import AddressError, describe_connect_error, parse_address
from .common import fail, run_trio


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
        """Proxy plain connections to one protocol of a server port (for developer tools).

        Runs until Ctrl-C (or SIGTERM), which ends it with exit status 0."""
        type_byte = PROTOCOLS.get(protocol)
        if type_byte is None:
            fail(f"Unknown protocol {protocol!r}; known: {', '.join(sorted(PROTOCOLS))}")
        try:
            server = parse_address(server_addr, default_port=SERVER_PORT)
            listen = parse_address(listen_addr)
        except AddressError as exc:
            fail(f"Invalid address: {exc}")
        if server.kind != "tcp" or listen.kind != "tcp":
            fail("The proxy needs TCP addresses (HOST:PORT)")

        async def main() -> OSError | None:
            failure: OSError | None = None
            async with trio.open_nursery() as nursery:

                async def until_interrupted() -> None:
                    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                        async for _ in signals:
                            nursery.cancel_scope.cancel()

                nursery.start_soon(until_interrupted)
                try:
                    bound = await nursery.start(
                        lambda task_status: serve_proxy(
                            server, type_byte, listen=listen, task_status=task_status
                        )
                    )
                except OSError as exc:
                    # Raised here it would leave the nursery wrapped in an exception group.
                    failure = exc
                    nursery.cancel_scope.cancel()
                else:
                    print(f"Proxying connections to the {protocol} protocol of {server}")
                    print(f"Use this address: {bound}")
                    sys.stdout.flush()
            return failure

        failure = run_trio(main)  # Ctrl-C or SIGTERM: the proxy's only way out, exit 0
        if failure is not None:
            fail(f"Error starting the proxy on {listen}: {describe_connect_error(failure)}")
