"""Helpers for the server-port tests: a captured log, a running port, hand-built bytes.

The expected bytes here are built by hand from the yamux spec and the msgpack spec (never with
the code under test), so that a test comparing them with what our code writes is a real check.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
import trustme

from agentrpc.budget import SharedBudget
from agentrpc.logs import TRACE, Logger, LogHub
from agentrpc.serverport.endpoints import Endpoints
from agentrpc.serverport.router import GossipStreamHandler, RouterLimits
from agentrpc.serverport.server import ServerPort
from agentrpc.serverport.tls import TLSConfig
from agentrpc.transports import Address

# ------------------------------------------------------------------------- hand-built bytes

DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8


def frame(frame_type: int, flags: int, stream_id: int, length: int) -> bytes:
    """A yamux header per spec.md: version 0, type, flags (16 bits), id (32), length (32)."""
    return (
        bytes([0, frame_type])
        + flags.to_bytes(2, "big")
        + stream_id.to_bytes(4, "big")
        + length.to_bytes(4, "big")
    )


def data_frame(stream_id: int, payload: bytes, flags: int = 0) -> bytes:
    return frame(DATA, flags, stream_id, len(payload)) + payload


def fixstr(text: str) -> bytes:
    raw = text.encode()
    assert len(raw) < 32
    return bytes([0xA0 | len(raw)]) + raw


def request_bytes(method: str, seq: int, body: bytes = b"\x80") -> bytes:
    """go-msgpack's rpc.Request: a 2-entry map, keys sorted (Seq < ServiceMethod)."""
    assert 0 <= seq < 128
    return b"\x82" + fixstr("Seq") + bytes([seq]) + fixstr("ServiceMethod") + fixstr(method) + body


def response_bytes(method: str, seq: int, error: str = "", body: bytes = b"\x80") -> bytes:
    """go-msgpack's rpc.Response: a 3-entry map, keys sorted (Error < Seq < ServiceMethod)."""
    assert 0 <= seq < 128
    if len(error.encode()) < 32:
        encoded_error = fixstr(error)
    else:
        raw = error.encode()
        encoded_error = b"\xd9" + bytes([len(raw)]) + raw
    return (
        b"\x83"
        + fixstr("Error")
        + encoded_error
        + fixstr("Seq")
        + bytes([seq])
        + fixstr("ServiceMethod")
        + fixstr(method)
        + body
    )


# ------------------------------------------------------------------------- logs


class LogCapture:
    """A log hub writing every level into memory."""

    def __init__(self) -> None:
        self.sink = io.StringIO()
        self.hub = LogHub(TRACE, sink=self.sink)

    def logger(self, component: str = "agent.server.rpc") -> Logger:
        return self.hub.logger(component)

    @property
    def text(self) -> str:
        return self.sink.getvalue()


# ------------------------------------------------------------------------- sockets


async def tcp(address: Address) -> trio.SocketStream:
    return await trio.open_tcp_stream(address.host, address.port)


def local_name(stream: trio.SocketStream) -> str:
    host, port = stream.socket.getsockname()[:2]
    return f"{host}:{port}"


async def read_exactly(stream: trio.abc.ReceiveStream, count: int) -> bytes:
    """Exactly ``count`` bytes (fails the test after 5 s or at EOF)."""
    data = bytearray()
    with trio.fail_after(5):
        while len(data) < count:
            chunk = await stream.receive_some(count - len(data))
            assert chunk, f"EOF after {len(data)} of {count} bytes: {bytes(data)!r}"
            data += chunk
    return bytes(data)


async def read_to_eof(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything until EOF (a reset counts as EOF); fails the test after 5 s."""
    data = bytearray()
    with trio.fail_after(5):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            data += chunk
    return bytes(data)


# ------------------------------------------------------------------------- running a port


@dataclass
class RunningPort:
    port: ServerPort
    address: Address
    log: LogCapture


@asynccontextmanager
async def running_port(
    endpoints: Endpoints | None = None,
    *,
    tls: TLSConfig | None = None,
    limits: RouterLimits | None = None,
    gossip: GossipStreamHandler | None = None,
    log: LogCapture | None = None,
    send_budget: SharedBudget | None = None,
) -> AsyncIterator[RunningPort]:
    """A server port on 127.0.0.1 with an OS-assigned port, shut down on exit."""
    log = log or LogCapture()
    port = ServerPort(
        "127.0.0.1:0",
        endpoints or Endpoints(),
        tls,
        log.logger(),
        limits,
        gossip_handler=gossip,
        drain_timeout=0.5,
        send_budget=send_budget,
    )
    async with trio.open_nursery() as nursery:
        address = await nursery.start(port.run)
        try:
            yield RunningPort(port, address, log)
        finally:
            port.shutdown()


# ------------------------------------------------------------------------- TLS material


@dataclass
class TLSFiles:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str
    rogue_cert: str
    rogue_key: str

    def server(self, *, verify_incoming: bool = True, verify_outgoing: bool = False) -> TLSConfig:
        return TLSConfig(
            ca_file=self.ca,
            cert_file=self.server_cert,
            key_file=self.server_key,
            verify_incoming=verify_incoming,
            verify_outgoing=verify_outgoing,
        )

    def client(self, *, cert: bool = True) -> TLSConfig:
        return TLSConfig(
            ca_file=self.ca,
            cert_file=self.client_cert if cert else None,
            key_file=self.client_key if cert else None,
            verify_outgoing=True,
        )


def make_tls_files(directory: Path) -> TLSFiles:
    """A CA with a server and a client certificate, and a rogue CA with its own certificate."""
    ca = trustme.CA()
    other = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost", "server.dc1.consul")
    client = ca.issue_cert("client.dc1.consul")
    rogue = other.issue_cert("127.0.0.1", "localhost")

    def write(name: str, blob: trustme.Blob) -> str:
        path = directory / name
        blob.write_to_path(str(path))
        return str(path)

    return TLSFiles(
        ca=write("ca.pem", ca.cert_pem),
        server_cert=write("server.pem", server.cert_chain_pems[0]),
        server_key=write("server.key", server.private_key_pem),
        client_cert=write("client.pem", client.cert_chain_pems[0]),
        client_key=write("client.key", client.private_key_pem),
        other_ca=write("other-ca.pem", other.cert_pem),
        rogue_cert=write("rogue.pem", rogue.cert_chain_pems[0]),
        rogue_key=write("rogue.key", rogue.private_key_pem),
    )
