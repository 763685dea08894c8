"""TLS on the server port (bytes 3 and 7), with certificates made at test time by trustme."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio
from sp_helpers import (
    LogCapture,
    TLSFiles,
    local_name,
    make_tls_files,
    read_exactly,
    read_to_eof,
    request_bytes,
    response_bytes,
    running_port,
    tcp,
)

from agentrpc.serverport.endpoints import Endpoints, RemoteError, RPCCallError, call_on_stream
from agentrpc.serverport.pool import open_connection_pool
from agentrpc.serverport.tls import TLSConfig, TLSConfigError
from agentrpc.serverport.yamux_session import YamuxConfig, YamuxSession
from agentrpc.transports import Address

PING_REQUEST = request_bytes("Status.Ping", 1)
PING_RESPONSE = response_bytes("Status.Ping", 1)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


async def tls_connect(
    address: Address, context: ssl.SSLContext, first: int = 3
) -> trio.SSLStream[trio.SocketStream]:
    raw = await tcp(address)
    await raw.send_all(bytes([first]))
    stream = trio.SSLStream(raw, context)
    with trio.fail_after(5):
        await stream.do_handshake()
    return stream


async def test_byte_3_tls_then_inner_byte_0(files: TLSFiles) -> None:
    async with running_port(tls=files.server()) as running:
        stream = await tls_connect(running.address, files.client().client_context())
        await stream.send_all(b"\x00" + PING_REQUEST)
        assert await read_exactly(stream, len(PING_RESPONSE)) == PING_RESPONSE
        assert stream.getpeercert() is not None


async def test_byte_3_tls_then_inner_byte_4_multiplexer(files: TLSFiles) -> None:
    async with running_port(tls=files.server()) as running:
        stream = await tls_connect(running.address, files.client().client_context())
        await stream.send_all(b"\x04")
        session = YamuxSession(stream, client=True, config=YamuxConfig(keepalive_interval=None))
        async with trio.open_nursery() as nursery:
            await nursery.start(session.run)
            for seq in range(1, 4):
                sub = await session.open_stream()
                assert await call_on_stream(sub, "Status.Ping", {}, seq=seq) == {}
                await sub.aclose()
            session.close()


async def test_pool_dials_tls_when_outgoing_tls_is_on(files: TLSFiles) -> None:
    async with running_port(tls=files.server()) as running:
        async with open_connection_pool(tls=files.client(), call_timeout=5) as pool:
            assert await pool.call(running.address, "Status.Ping", {}) == {}
            assert await pool.call(running.address, "Status.Ping", {}) == {}
            assert pool.stats.dials == 1
        assert "Non-TLS" not in running.log.text


async def test_verify_incoming_refuses_plain_connections(files: TLSFiles) -> None:
    async with running_port(tls=files.server()) as running:
        names = []
        for kind in (0, 4, 6):
            plain = await tcp(running.address)
            names.append(local_name(plain))
            await plain.send_all(bytes([kind]) + PING_REQUEST)
            assert await read_to_eof(plain) == b""
        assert running.port.router.stats.refused_non_tls == 3
        # Logged with the peer and the byte, through the per-kind throttle: one line a second.
        assert (
            f"Non-TLS connection attempted with VerifyIncoming set: conn=from={names[0]} byte=0"
        ) in running.log.text
        assert running.log.text.count("Non-TLS connection attempted") == 1
        # In-process calls never leave the process: they are served without TLS.
        assert await running.port.call_local("Status.Ping", {}) == {}


async def test_without_verify_incoming_plain_and_tls_both_work(files: TLSFiles) -> None:
    async with running_port(tls=files.server(verify_incoming=False)) as running:
        plain = await tcp(running.address)
        await plain.send_all(b"\x00" + PING_REQUEST)
        assert await read_exactly(plain, len(PING_RESPONSE)) == PING_RESPONSE
        # No client certificate is asked for.
        secure = await tls_connect(running.address, files.client(cert=False).client_context())
        await secure.send_all(b"\x00" + PING_REQUEST)
        assert await read_exactly(secure, len(PING_RESPONSE)) == PING_RESPONSE


@pytest.mark.parametrize("which", ["no client certificate", "certificate from another CA"])
async def test_bad_client_certificates_are_refused(files: TLSFiles, which: str) -> None:
    if which == "no client certificate":
        client = files.client(cert=False)
    else:
        client = TLSConfig(
            ca_file=files.ca,
            cert_file=files.rogue_cert,
            key_file=files.rogue_key,
            verify_outgoing=True,
        )
    async with running_port(tls=files.server()) as running:
        raw = await tcp(running.address)
        await raw.send_all(b"\x03")
        stream = trio.SSLStream(raw, client.client_context())
        with pytest.raises(trio.BrokenResourceError):
            # TLS 1.3 reports a refused client certificate after the client's handshake.
            await stream.send_all(b"\x00" + PING_REQUEST)
            await stream.receive_some()
        assert "TLS handshake with" in running.log.text
        assert running.port.router.stats.tls_failures == 1


async def test_bad_server_certificate_is_refused_by_the_pool(files: TLSFiles) -> None:
    rogue_server = TLSConfig(ca_file=files.ca, cert_file=files.rogue_cert, key_file=files.rogue_key)
    async with (
        running_port(tls=rogue_server) as running,
        open_connection_pool(tls=files.client(), call_timeout=5) as pool,
    ):
        with pytest.raises(RPCCallError, match="certificate verify failed"):
            await pool.call(running.address, "Status.Ping", {})


@pytest.mark.parametrize("inner", [3, 7])
async def test_tls_inside_tls_is_refused(files: TLSFiles, inner: int) -> None:
    async with running_port(tls=files.server()) as running:
        stream = await tls_connect(running.address, files.client().client_context())
        await stream.send_all(bytes([inner]))
        assert await read_to_eof(stream) == b""
        assert "TLS connection attempting to establish inner TLS connection" in running.log.text
        assert running.port.router.stats.refused_tls_in_tls == 1


async def test_byte_7_tls_without_client_certificate_serves_insecure_endpoints(
    files: TLSFiles,
) -> None:
    endpoints = Endpoints()
    endpoints.register("AutoEncrypt.Sign", lambda body: {"Cert": "for " + body}, insecure=True)
    async with running_port(endpoints, tls=files.server()) as running:
        context = files.client(cert=False).client_context()
        stream = await tls_connect(running.address, context, first=7)
        # No inner type byte: the RPC starts at once (the reference's insecure RPC server).
        reply = await call_on_stream(stream, "AutoEncrypt.Sign", "node1", seq=1)
        assert reply == {"Cert": "for node1"}
        with pytest.raises(RemoteError, match=r"can't find service Status\.Ping"):
            await call_on_stream(stream, "Status.Ping", {}, seq=2)


async def test_tls_bytes_without_tls_configured_are_closed() -> None:
    log = LogCapture()
    async with running_port(log=log) as running:
        for kind in (3, 7):
            stream = await tcp(running.address)
            await stream.send_all(bytes([kind]) + b"\x16\x03\x01")
            assert await read_to_eof(stream) == b""
        assert running.port.router.stats.tls_failures == 2
        assert log.text.count("TLS is not configured") == 1  # the throttle: one line a second


def test_tls_config_validation(files: TLSFiles, tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError):
        TLSConfig(cert_file=files.server_cert)
    with pytest.raises(TLSConfigError):
        TLSConfig(cert_file=files.server_cert, key_file=files.server_key, verify_incoming=True)
    with pytest.raises(TLSConfigError):
        TLSConfig(verify_outgoing=True)
    missing = TLSConfig(
        ca_file=str(tmp_path / "nope.pem"),
        cert_file=files.server_cert,
        key_file=files.server_key,
        verify_incoming=True,
    )
    with pytest.raises(TLSConfigError, match="cannot load"):
        missing.server_context(verify_client=True)
    assert not TLSConfig().can_serve
    assert files.server().can_serve
    assert files.client().outgoing
