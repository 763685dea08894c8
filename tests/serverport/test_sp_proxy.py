"""The developer proxy: a plain port in front of one protocol of the server port, as a library
function and as the ``agentrpc proxy`` command (a subprocess)."""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest
import trio
from sp_helpers import read_exactly, read_to_eof, request_bytes, response_bytes, running_port, tcp

from agentrpc.serverport.endpoints import call_on_stream
from agentrpc.serverport.proxy import PROTOCOLS, serve_proxy
from agentrpc.serverport.rpc_codec import RPCType
from agentrpc.serverport.yamux_session import YamuxConfig, YamuxSession
from agentrpc.transports import Address, parse_address

PING_REQUEST = request_bytes("Status.Ping", 1)
PING_RESPONSE = response_bytes("Status.Ping", 1)


async def test_rpc_proxy_gives_a_plain_connection() -> None:
    async with running_port() as running, trio.open_nursery() as nursery:
        proxy = await nursery.start(functools.partial(serve_proxy, running.address, RPCType.CONSUL))
        assert proxy.host == "127.0.0.1" and proxy.port not in (0, running.address.port)
        client = await tcp(proxy)
        # No type byte: the proxy sent it; this is a plain msgpack RPC connection.
        await client.send_all(PING_REQUEST)
        assert await read_exactly(client, len(PING_RESPONSE)) == PING_RESPONSE
        # A half-close passes through: the server sees EOF and closes, so do we.
        await client.send_eof()
        assert await read_to_eof(client) == b""
        nursery.cancel_scope.cancel()


async def test_multiplex_proxy_carries_a_yamux_session() -> None:
    async with running_port() as running, trio.open_nursery() as nursery:
        proxy = await nursery.start(
            functools.partial(serve_proxy, running.address, PROTOCOLS["multiplex"])
        )
        session = YamuxSession(
            await tcp(proxy), client=True, config=YamuxConfig(keepalive_interval=None)
        )
        await nursery.start(session.run)
        stream = await session.open_stream()
        assert await call_on_stream(stream, "Status.Ping", {}, seq=1) == {}
        session.close()
        nursery.cancel_scope.cancel()


async def test_proxy_to_an_unreachable_server_closes_the_client() -> None:
    async with running_port() as running:
        gone = running.address
    async with trio.open_nursery() as nursery:
        proxy = await nursery.start(functools.partial(serve_proxy, gone, RPCType.CONSUL))
        client = await tcp(proxy)
        assert await read_to_eof(client) == b""
        nursery.cancel_scope.cancel()


_CLI = """
import typer
from agentrpc.cli.proxy_command import register
app = typer.Typer()

@app.callback()
def main() -> None:
    pass

register(app)
app()
"""


async def test_proxy_command_prints_its_address_and_proxies() -> None:
    async with running_port() as running, trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                [
                    sys.executable,
                    "-c",
                    _CLI,
                    "proxy",
                    "--protocol",
                    "rpc",
                    "--server-addr",
                    str(running.address),
                ],
                stdout=subprocess.PIPE,
                check=False,
            )
        )
        try:
            assert process.stdout is not None
            output = b""
            with trio.fail_after(20):
                while b"Use this address: " not in output or not output.endswith(b"\n"):
                    chunk = await process.stdout.receive_some()
                    assert chunk, f"proxy exited early: {output!r}"
                    output += chunk
            text = output.decode()
            assert f"Proxying connections to the rpc protocol of {running.address}" in text
            proxy: Address = parse_address(text.split("Use this address: ")[1].strip())
            client = await tcp(proxy)
            await client.send_all(PING_REQUEST)
            assert await read_exactly(client, len(PING_RESPONSE)) == PING_RESPONSE
            await client.aclose()
        finally:
            process.terminate()  # the one process this test started, by its handle
    assert process.returncode is not None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--protocol", "smtp"], b"Unknown protocol 'smtp'"),
        (["--server-addr", "nohost:port"], b"Invalid address"),
    ],
)
async def test_proxy_command_rejects_bad_arguments(arguments: list[str], message: bytes) -> None:
    result = await trio.run_process(
        [sys.executable, "-c", _CLI, "proxy", *arguments],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 1
    assert message in result.stderr
