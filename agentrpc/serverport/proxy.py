"""The developer proxy: a plain local port in front of one protocol of the server port.

Several protocols share the server port, so plain tools cannot talk to one of them. The proxy
listens on a free local port; for each connection it dials the server port, sends the chosen
type byte, then copies bytes both ways (a half-close on one side is passed on to the other), so
that a plain client gets a plain connection to that protocol.
"""

from __future__ import annotations

import functools
from typing import Final

import trio

from ..log_protocol import DEBUG, ERR, WARN, LogLike, NullLog, clip, describe_failure
from ..transports import DEFAULT_NETWORK, Address, MemoryNetwork, connect, open_listeners
from .rpc_codec import RPCType

PROTOCOLS: Final[dict[str, RPCType]] = {
    "rpc": RPCType.CONSUL,
    "multiplex": RPCType.MULTIPLEX_V2,
    "gossip": RPCType.GOSSIP,
    "raft": RPCType.RAFT,
    "grpc": RPCType.GRPC,
}
"""Protocol names the proxy knows, and their type bytes."""
DEFAULT_LISTEN: Final = Address("tcp", host="127.0.0.1", port=0)
COPY_SIZE: Final = 64 * 1024


async def _pump(
    source: trio.abc.Stream, sink: trio.abc.Stream, connection: trio.CancelScope
) -> None:
    try:
        while data := await source.receive_some(COPY_SIZE):
            await sink.send_all(data)
        if isinstance(sink, trio.abc.HalfCloseableStream):
            await sink.send_eof()
        else:
            connection.cancel()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        connection.cancel()


async def proxy_connection(
    client: trio.abc.Stream,
    server: Address,
    type_byte: int,
    *,
    logger: LogLike | None = None,
    network: MemoryNetwork = DEFAULT_NETWORK,
) -> None:
    """Serve one proxied connection: dial ``server``, send ``type_byte``, copy both ways.
    Closes ``client``; never raises for a peer's fault."""
    log: LogLike = logger or NullLog()
    try:
        try:
            upstream = await connect(server, network=network)
        except OSError as exc:
            log.throttled(
                WARN,
                "server-port:proxy-unreachable",
                f"proxy: cannot reach the server port at {server}: {clip(exc)}",
            )
            return
        try:
            await upstream.send_all(bytes([type_byte]))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump, client, upstream, nursery.cancel_scope)
                nursery.start_soon(_pump, upstream, client, nursery.cancel_scope)
        finally:
            await trio.aclose_forcefully(upstream)
    except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
        log.throttled(
            DEBUG,
            "server-port:proxy-ended",
            f"proxy: connection ended: {clip(repr(group.exceptions[0]))}",
        )
    except* Exception as group:
        log.throttled(
            ERR, "server-port:proxy-failed", f"proxy: connection failed: {describe_failure(group)}"
        )
    finally:
        await trio.aclose_forcefully(client)


async def serve_proxy(
    server: Address,
    type_byte: int,
    *,
    listen: Address = DEFAULT_LISTEN,
    logger: LogLike | None = None,
    network: MemoryNetwork = DEFAULT_NETWORK,
    task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``listen`` (a free loopback port by default) and proxy every connection;
    ``task_status.started(bound address)``. Runs until cancelled."""
    bound = await open_listeners(listen, network=network)
    listeners = [listener for listener, _ in bound]
    handler = functools.partial(
        proxy_connection, server=server, type_byte=type_byte, logger=logger, network=network
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handler, listeners)
            task_status.started(bound[0][1])
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
