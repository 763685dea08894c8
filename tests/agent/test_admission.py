"""Peer naming and per-IP admission counting: the one home both listeners use."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
import trio.testing

from agentrpc.admission import IN_PROCESS, UNKNOWN, AdmissionCounter, Peer, Refusal, peer_of


class _FakeSocket:
    def __init__(self, peer: Any = None, local: Any = "", error: bool = False) -> None:
        self._peer = peer
        self._local = local
        self._error = error

    def getpeername(self) -> Any:
        if self._error:
            raise OSError("gone")
        return self._peer

    def getsockname(self) -> Any:
        return self._local


class _FakeStream:
    def __init__(self, sock: _FakeSocket) -> None:
        self.socket = sock


def test_peer_names_put_the_name_first_and_bracket_ipv6() -> None:
    v4 = peer_of(_FakeStream(_FakeSocket(("10.0.0.5", 52000))))  # type: ignore[arg-type]
    assert v4 == Peer("10.0.0.5:52000", "10.0.0.5")
    v6 = peer_of(_FakeStream(_FakeSocket(("::1", 52000, 0, 0))))  # type: ignore[arg-type]
    assert v6.name == "[::1]:52000"
    assert v6.ip == "::1"


def test_peers_without_an_ip() -> None:
    left, _right = trio.testing.memory_stream_pair()
    assert peer_of(left) is IN_PROCESS
    assert peer_of(_FakeStream(_FakeSocket(error=True))) is UNKNOWN  # type: ignore[arg-type]
    unix = peer_of(_FakeStream(_FakeSocket("", "/tmp/rpc.sock")))  # type: ignore[arg-type]
    assert unix == Peer("unix:/tmp/rpc.sock", None)
    assert peer_of(_FakeStream(_FakeSocket("", ""))).name == "unix:-"  # type: ignore[arg-type]


async def test_peer_of_a_real_unix_socket_names_the_path(tmp_path: Any) -> None:
    path = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    client = socket.socket(socket.AF_UNIX)
    client.connect(path)
    accepted, _ = server.accept()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(accepted))
    try:
        assert peer_of(stream) == Peer(f"unix:{path}", None)
    finally:
        await stream.aclose()
        client.close()
        server.close()


def test_counter_caps_per_ip_and_in_total() -> None:
    counter = AdmissionCounter(max_total=3, max_per_client=2)
    assert counter.admit("10.0.0.1") is None
    assert counter.admit("10.0.0.1") is None
    assert counter.admit("10.0.0.1") is Refusal.PER_CLIENT
    assert counter.connections_from("10.0.0.1") == 2
    assert counter.admit(None) is None  # no IP: counts toward the total only
    assert counter.total == 3
    assert counter.admit("10.0.0.2") is Refusal.TOTAL
    counter.release("10.0.0.1")
    assert counter.admit("10.0.0.2") is None
    counter.release("10.0.0.1")
    counter.release("10.0.0.2")
    counter.release(None)
    assert counter.total == 0
    assert counter.connections_from("10.0.0.1") == 0


def test_zero_means_no_limit_and_limits_change_for_the_next_connection() -> None:
    counter = AdmissionCounter()
    for _ in range(1000):
        assert counter.admit("10.0.0.1") is None
    counter.max_per_client = 1000
    assert counter.admit("10.0.0.1") is Refusal.PER_CLIENT
    counter.max_per_client = 0
    assert counter.admit("10.0.0.1") is None
    with pytest.raises(ValueError):
        AdmissionCounter(max_total=-1)
