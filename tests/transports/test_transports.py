"""Transports: address parsing, memory streams, unix sockets, listeners."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio

from agentrpc.transports import (
    Address,
    AddressError,
    MemoryNetwork,
    connect,
    memory_stream_pair,
    open_listeners,
    parse_address,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8400", Address("tcp", "127.0.0.1", 8400)),
        ("[::1]:8400", Address("tcp", "::1", 8400)),
        ("localhost:0", Address("tcp", "localhost", 0)),
        ("unix:///run/agent.sock", Address("unix", path="/run/agent.sock")),
        ("/run/agent.sock", Address("unix", path="/run/agent.sock")),
        ("memory://a1", Address("memory", path="a1")),
    ],
)
def test_parse_address(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


def test_default_port_and_round_trip() -> None:
    assert parse_address("10.0.0.1", default_port=8400) == Address("tcp", "10.0.0.1", 8400)
    assert parse_address("::1", default_port=1) == Address("tcp", "::1", 1)
    assert str(Address("tcp", "::1", 5)) == "[::1]:5"
    assert str(parse_address("unix:///x")) == "unix:///x"


@pytest.mark.parametrize(
    "text", ["", "host", "host:port", "1.2.3.4:70000", "unix://relative", "ftp://x", "[::1", ":80"]
)
def test_bad_addresses(text: str) -> None:
    with pytest.raises(AddressError):
        parse_address(text)


def test_loopback_detection() -> None:
    assert parse_address("127.0.0.2:1").is_loopback
    assert parse_address("[::1]:1").is_loopback
    assert not parse_address("0.0.0.0:1").is_loopback
    assert parse_address("unix:///x").is_loopback


async def test_memory_stream_pair_moves_bytes_and_half_closes() -> None:
    a, b = memory_stream_pair()
    await a.send_all(b"hello world")
    assert await b.receive_some(5) == b"hello"
    assert await b.receive_some() == b" world"
    await a.send_eof()
    assert await b.receive_some() == b""
    await b.send_all(b"reply")
    assert await a.receive_some() == b"reply"
    with pytest.raises(trio.ClosedResourceError):
        await a.send_all(b"after eof")
    await b.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await b.receive_some()
    c, d = memory_stream_pair()
    await d.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await c.send_all(b"x")


async def test_memory_stream_pushes_back_when_the_reader_stalls() -> None:
    a, _b = memory_stream_pair(chunks=2)
    await a.send_all(b"1")
    await a.send_all(b"2")
    with trio.move_on_after(0.1) as scope:
        await a.send_all(b"3")
    assert scope.cancelled_caught


async def test_memory_network_listen_connect_close() -> None:
    network = MemoryNetwork()
    ((listener, address),) = await open_listeners(parse_address("memory://x"), network=network)
    with pytest.raises(OSError, match="already in use"):
        network.listen("x")
    client = await connect(address, network=network)
    server = await listener.accept()
    await client.send_all(b"ping")
    assert await server.receive_some() == b"ping"
    await listener.aclose()
    with pytest.raises(ConnectionRefusedError):
        await connect(address, network=network)


async def test_tcp_listener_reports_the_real_port() -> None:
    ((listener, address),) = await open_listeners(parse_address("127.0.0.1:0"))
    async with listener:
        assert address.port != 0
        client = await connect(address)
        server = await listener.accept()
        await client.send_all(b"x")
        assert await server.receive_some() == b"x"
        await client.aclose()
        await server.aclose()


async def test_unix_listener_replaces_a_stale_socket_and_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file remains, nobody listens: a dead agent's leftover
    ((listener, address),) = await open_listeners(parse_address(f"unix://{path}"))
    client = await connect(address)
    server = await listener.accept()
    await client.send_all(b"u")
    assert await server.receive_some() == b"u"
    with pytest.raises(OSError, match="another process is listening"):
        await open_listeners(address)
    await client.aclose()
    await server.aclose()
    await listener.aclose()
    assert not path.exists()


async def test_unix_listener_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "not-a-socket"
    path.write_text("data")
    with pytest.raises(OSError, match="not a socket"):
        await open_listeners(parse_address(f"unix://{path}"))


async def test_describe_connect_error_names_the_real_reason() -> None:
    from agentrpc.transports import describe_connect_error

    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        await trio.open_tcp_stream("127.0.0.1", port)
    except OSError as exc:
        assert describe_connect_error(exc) == "connection refused"
    else:
        raise AssertionError("nobody listens there")
