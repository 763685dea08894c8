"""The client's exceptions: one per way a call can fail, each its documented class, none
wrapped in an exception group; the dial and handshake deadlines hold (autojump clock)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable

import msgpack
import pytest
import trio
import trio.testing
from rpc_helpers import client_for, running_agent

import agentrpc
from agentrpc import (
    AgentConnectionError,
    AgentGoneError,
    AgentTimeoutError,
    Client,
    ClientError,
    InvalidAddressError,
    JoinError,
    NotAnAgentError,
    PermissionDeniedError,
    RPCError,
)
from agentrpc.client import SerfClient
from agentrpc.protocol.codec import Request, RequestDecoder
from agentrpc.transports import AddressError, MemoryNetwork, memory_stream_pair

Peer = Callable[[trio.abc.Stream], Awaitable[None]]


def test_the_hierarchy_is_exported_and_documented() -> None:
    assert issubclass(InvalidAddressError, ClientError)
    assert issubclass(InvalidAddressError, AddressError)
    assert issubclass(InvalidAddressError, ValueError)
    for cls in (AgentTimeoutError, NotAnAgentError, AgentGoneError):
        assert issubclass(cls, AgentConnectionError)
    assert issubclass(AgentTimeoutError, TimeoutError)
    assert issubclass(AgentConnectionError, ClientError)
    for cls in (PermissionDeniedError, JoinError):
        assert issubclass(cls, RPCError)
    assert issubclass(RPCError, ClientError)
    for name in (
        "ClientError",
        "InvalidAddressError",
        "AgentConnectionError",
        "AgentTimeoutError",
        "NotAnAgentError",
        "AgentGoneError",
        "RPCError",
        "PermissionDeniedError",
        "JoinError",
    ):
        assert name in agentrpc.__all__
        cls = getattr(agentrpc, name)
        assert cls.__doc__, name
        assert name in (agentrpc.client_errors.__doc__ or ""), name


@pytest.mark.parametrize(
    "address", ["foo://x", "127.0.0.1:99999", "unix://relative.sock", "127.0.0.1:port", ""]
)
def test_a_bad_address_is_an_invalid_address_error_at_once(address: str) -> None:
    with pytest.raises(InvalidAddressError):
        Client(address)


def test_a_bad_deadline_is_refused() -> None:
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="positive number of seconds"):
            Client("127.0.0.1:8400", connect_timeout=bad)
        with pytest.raises(ValueError, match="positive number of seconds"):
            Client("127.0.0.1:8400", handshake_timeout=bad)


def test_no_address_means_the_environment_then_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AGENTRPC_RPC_ADDR", raising=False)
    assert str(Client().address) == "127.0.0.1:8400"
    monkeypatch.setenv("AGENTRPC_RPC_ADDR", "unix:///run/agent.sock")
    assert str(Client().address) == "unix:///run/agent.sock"
    monkeypatch.setenv("AGENTRPC_RPC_ADDR", "bogus://")
    with pytest.raises(InvalidAddressError):
        Client()


async def _enter(client: Client) -> None:
    async with client:
        raise AssertionError("the client should not have connected")


async def _with_peer(
    peer: Peer, client_type: type[Client] | type[SerfClient] = Client, **options: float
) -> Exception:
    """Run a client against ``peer`` over an in-memory stream; the exception it raised."""
    ours, theirs = memory_stream_pair()

    async def run_peer() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await peer(theirs)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_peer)
        try:
            with trio.fail_after(60):  # a deadline that does not hold fails, never hangs
                await _enter(client_type(stream=ours, **options))
        except Exception as exc:  # the test inspects exactly what came out (a group too)
            caught = exc
        nursery.cancel_scope.cancel()
    return caught


async def _silent(stream: trio.abc.Stream) -> None:
    """Accept and never answer (bounded by the caller's deadline)."""
    while await stream.receive_some():
        pass


async def test_the_handshake_deadline_holds(autojump_clock: trio.abc.Clock) -> None:
    start = trio.current_time()
    caught = await _with_peer(_silent, handshake_timeout=3)
    assert type(caught) is AgentTimeoutError
    assert trio.current_time() - start == pytest.approx(3)
    assert caught.timeout == 3
    assert "did not answer the handshake within 3 s" in str(caught)


async def test_the_default_deadline_is_ten_seconds(autojump_clock: trio.abc.Clock) -> None:
    start = trio.current_time()
    caught = await _with_peer(_silent)
    assert isinstance(caught, AgentTimeoutError)
    assert trio.current_time() - start == pytest.approx(10)


async def test_the_dial_deadline_holds(autojump_clock: trio.abc.Clock) -> None:
    network = MemoryNetwork()
    listener = network.listen("full")
    async with trio.open_nursery() as nursery:
        # Nobody accepts: once the backlog is full, the next dial waits for ever.
        for _ in range(200):
            with trio.move_on_after(0.001) as scope:
                await network.connect("full")
            if scope.cancelled_caught:
                break
        else:
            raise AssertionError("the memory listener never filled up")
        start = trio.current_time()
        with (
            trio.fail_after(60),
            pytest.raises(AgentTimeoutError, match=r"dial memory://full: timed out after 2 s"),
        ):
            await _enter(Client("memory://full", network=network, connect_timeout=2))
        assert trio.current_time() - start == pytest.approx(2)
        nursery.cancel_scope.cancel()
    await listener.aclose()


async def _garbage(stream: trio.abc.Stream) -> None:
    await stream.receive_some()
    await stream.send_all(b"\x01\x02\x03 this is not msgpack framing")
    await _silent(stream)


async def _hang_up(stream: trio.abc.Stream) -> None:
    await stream.receive_some()
    await stream.aclose()


async def _flood(stream: trio.abc.Stream) -> None:
    await stream.receive_some()
    # Well-formed responses, none to the handshake's Seq, without end.
    frame = msgpack.packb({"Seq": 999, "Error": ""})
    for _ in range(1000):  # ~14 MB at most; the client gives up after 64 KiB
        await stream.send_all(frame * 1000)


@pytest.mark.parametrize(
    ("peer", "text"),
    [
        (_garbage, "does not speak the agent RPC"),
        (_hang_up, "closed the connection without answering the handshake"),
        (_flood, "without answering the handshake"),
    ],
)
async def test_a_peer_that_is_no_agent(peer: Peer, text: str) -> None:
    caught = await _with_peer(peer)
    assert type(caught) is NotAnAgentError
    assert text in str(caught)
    assert "logs as 'RPC listening on'" in str(caught)


async def test_a_serf_client_points_at_the_serf_rpc_listener() -> None:
    """Its port is another listener: the hint names the one to look for."""
    caught = await _with_peer(_garbage, SerfClient)
    assert type(caught) is NotAnAgentError
    assert "does not speak the agent RPC" in str(caught)
    assert "'Serf RPC listening on'" in str(caught)
    assert "logs as 'RPC listening on'" not in str(caught)


async def _refuse_version(stream: trio.abc.Stream) -> None:
    decoder = RequestDecoder()
    while data := await stream.receive_some():
        decoder.feed(data)
        for request in decoder:
            assert isinstance(request, Request)
            await stream.send_all(
                msgpack.packb({"Seq": request.seq, "Error": "Unsupported RPC version"})
            )


async def test_a_refused_handshake_is_an_rpc_error_with_the_agents_text() -> None:
    caught = await _with_peer(_refuse_version)
    assert type(caught) is RPCError
    assert caught.error == "Unsupported RPC version"


async def _handshake_then_die(stream: trio.abc.Stream) -> None:
    """Answer the handshake, then drop the connection at the next request (a crash)."""
    decoder = RequestDecoder()
    answered = False
    while data := await stream.receive_some():
        decoder.feed(data)
        for request in decoder:
            assert isinstance(request, Request)
            if answered:
                await stream.aclose()
                return
            await stream.send_all(msgpack.packb({"Seq": request.seq, "Error": ""}))
            answered = True


async def test_an_agent_gone_mid_call_fails_every_pending_call() -> None:
    ours, theirs = memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_handshake_then_die, theirs)
        failures: list[BaseException] = []
        async with Client(stream=ours) as client:

            async def call() -> None:
                try:
                    await client.members_lan()
                except ClientError as exc:
                    failures.append(exc)

            async with trio.open_nursery() as calls:
                for _ in range(3):
                    calls.start_soon(call)
            assert len(failures) == 3
            assert all(type(exc) is AgentGoneError for exc in failures)
            # The reader saw EOF, or the write of a request failed first: both say so.
            assert str(failures[0]).startswith(("the agent closed", "connection to the agent"))
            with pytest.raises(AgentGoneError):
                await client.stats()
        nursery.cancel_scope.cancel()


async def test_refused_is_a_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    caught: Exception | None = None
    try:
        await _enter(Client(f"127.0.0.1:{port}"))
    except Exception as exc:
        caught = exc
    assert type(caught) is AgentConnectionError
    assert str(caught) == f"dial 127.0.0.1:{port}: connection refused"


async def test_permission_denied_and_rpc_errors_carry_the_agents_exact_text() -> None:
    async with running_agent("memory", rpc_token="s3cret") as agent:
        async with client_for(agent) as client:
            with pytest.raises(PermissionDeniedError) as denied:
                await client.members_lan()
            assert denied.value.error == "Permission denied"
            with pytest.raises(PermissionDeniedError):
                await client.join(["127.0.0.1:1"])
        async with client_for(agent, token="s3cret") as client:
            with pytest.raises(RPCError) as refused:
                async with client.monitor("loud"):
                    pass
            assert type(refused.value) is RPCError
            assert refused.value.error == "Unknown log level: LOUD"
            with pytest.raises(JoinError) as failed:
                await client.join(["127.0.0.1:1"])
            assert failed.value.num == 0
            assert failed.value.error.startswith("1 error(s) occurred:")
            assert len(await client.members_lan()) == 1  # still in sync


async def test_a_monitor_whose_agent_dies_raises_after_its_lines() -> None:
    async with running_agent("tcp") as agent, client_for(agent) as client:
        seen: list[str] = []
        async with client.monitor("info") as lines:
            agent.hub.logger("test").info("last words")
            with pytest.raises(AgentGoneError, match="closed the connection"):
                async for line in lines:
                    seen.append(line)
                    if "last words" in line:
                        agent.shutdown()
        assert any("last words" in line for line in seen)
        assert any("shutdown complete" in line for line in seen)


async def test_a_monitor_stopped_by_its_owner_ends_quietly() -> None:
    async with running_agent("memory") as agent, client_for(agent) as client:
        async with client.monitor("info") as lines:
            agent.hub.logger("test").info("one line")
            async for line in lines:
                if "one line" in line:
                    break
        assert agent.rpc_stats.monitors == 0


async def test_no_exception_group_escapes_the_client() -> None:
    """Every failure of ``async with Client`` and of a call is the exception itself."""
    for peer in (_silent, _garbage, _hang_up, _refuse_version):
        with trio.fail_after(5):
            caught = await _with_peer(peer, handshake_timeout=0.5)
        assert isinstance(caught, ClientError)
        assert not isinstance(caught, BaseExceptionGroup)
    async with running_agent("memory") as agent:
        with pytest.raises(KeyError):
            async with client_for(agent):
                raise KeyError("the body's own")
        with pytest.raises(AgentGoneError):
            async with client_for(agent) as client:
                await client.aclose()
                await client.stats()
