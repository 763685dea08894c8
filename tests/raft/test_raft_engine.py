"""The Trio Raft engine (agentrpc.raft.engine) and its transport (agentrpc.raft.transport).

Three engines over in-memory streams on the autojump clock (election, replication, a killed
leader's nursery, re-election, no acknowledged entry lost, a restart catching up by snapshot,
shutdown leaving no task), and three over real loopback server ports (byte 1 through the
router) with SQLite stores in temporary directories, restarted from their stores.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from agentrpc.raft.configuration import Configuration, Server
from agentrpc.raft.engine import RaftEngine
from agentrpc.raft.errors import RaftError
from agentrpc.raft.kv_fsm import KVStateMachine, get_command, set_command
from agentrpc.raft.memory_store import MemoryStore
from agentrpc.raft.snapshots import FileSnapshotStore
from agentrpc.raft.sqlite_store import SQLiteStore
from agentrpc.raft.timing import RaftConfig
from agentrpc.raft.transport import (
    RaftTransport,
    TransportLimits,
    serve_inbound,
    tcp_dialer,
    tls_dialer,
)
from agentrpc.raft.wire import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    RequestVoteRequest,
    encode_request,
)
from agentrpc.serverport.tls import TLSConfig

BOUND = 60.0
"""Simulated seconds any wait in these tests may take (the autojump clock makes them fast)."""


@pytest.fixture
def jump_clock() -> trio.testing.MockClock:
    """An autojump clock that waits 20 ms of real idleness before jumping: the engine's store
    calls run in worker threads, and a clock that jumps while a vote is being persisted would
    fire the next election timeout every time (a livelock no real clock has)."""
    return trio.testing.MockClock(autojump_threshold=0.02)


def raft_config(node_id: str, address: str, **overrides: Any) -> RaftConfig:
    values: dict[str, Any] = dict(
        local_id=node_id,
        local_address=address,
        heartbeat_timeout=1.0,
        election_timeout=1.0,
        leader_lease_timeout=0.5,
        commit_timeout=0.05,
        shutdown_on_remove=False,
    )
    values.update(overrides)
    return RaftConfig(**values)


async def wait_until(engines: list[RaftEngine], predicate: Callable[[], bool]) -> None:
    """Wait (bounded) for a predicate over the engines' roles, re-checked at every change."""
    with trio.fail_after(BOUND):
        while not predicate():
            async with trio.open_nursery() as nursery:
                for engine in engines:

                    async def changed(engine: RaftEngine = engine) -> None:
                        await engine.wait_changed()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(changed)
                # Role changes are not the only thing predicates read: re-check on a tick.
                nursery.start_soon(_tick, nursery)


async def _tick(nursery: trio.Nursery) -> None:
    await trio.sleep(0.25)
    nursery.cancel_scope.cancel()


def leaders(nodes: list[MemNode]) -> list[MemNode]:
    return [n for n in nodes if n.engine is not None and n.running and n.engine.is_leader]


# ============================================================================ memory network


class MemNode:
    def __init__(self, net: MemNet, node_id: str, base: Path, **overrides: Any) -> None:
        self.net = net
        self.id = node_id
        self.address = f"{node_id}:8300"
        self.store = MemoryStore()
        self.base = base / node_id
        self.overrides = overrides
        self.engine: RaftEngine | None = None
        self.scope: trio.CancelScope | None = None
        self.nursery: trio.Nursery | None = None
        self.running = False
        self.fsm = KVStateMachine()

    async def start(self, outer: trio.Nursery) -> RaftEngine:
        self.fsm = KVStateMachine()
        self.engine = RaftEngine(
            raft_config(self.id, self.address, **self.overrides),
            logs=self.store,
            stable=self.store,
            snapshots=FileSnapshotStore(self.base),
            fsm=self.fsm,
            transport=RaftTransport(self.net.dial),
        )
        await outer.start(self._run)
        return self.engine

    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self.engine is not None
        with trio.CancelScope() as self.scope:
            try:
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    await nursery.start(self.engine.run)
                    self.running = True
                    task_status.started()
            finally:
                self.running = False
                self.nursery = None

    def kill(self) -> None:
        assert self.scope is not None
        self.running = False
        self.scope.cancel()

    async def serve(self, stream: trio.abc.Stream, peer: str) -> None:
        assert self.engine is not None
        try:
            # The router's job on a real port: the type byte, 1 for Raft.
            first = await stream.receive_some(1)
            if not first:
                return
            assert first == b"\x01"
            await self.engine.handle_connection(stream, peer)
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


class MemNet:
    def __init__(self) -> None:
        self.nodes: dict[str, MemNode] = {}
        self.dials = 0

    async def dial(self, address: str) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        node = self.nodes.get(address)
        if node is None or not node.running or node.nursery is None:
            raise OSError(f"connection refused: {address}")
        self.dials += 1
        client, server = trio.testing.memory_stream_pair()
        node.nursery.start_soon(node.serve, server, "memory")
        return client


def _tasks(root: trio.lowlevel.Task) -> int:
    count = 1
    for nursery in root.child_nurseries:
        for child in nursery.child_tasks:
            count += _tasks(child)
    return count


def _configuration(nodes: list[MemNode]) -> Configuration:
    return Configuration(tuple(Server(n.id, n.address) for n in nodes))


async def test_three_engines_elect_replicate_survive_a_killed_leader_and_stop_cleanly(
    tmp_path: Path, jump_clock: trio.testing.MockClock
) -> None:
    net = MemNet()
    nodes = [MemNode(net, f"n{i}", tmp_path) for i in (1, 2, 3)]
    for node in nodes:
        net.nodes[node.address] = node
    root = trio.lowlevel.current_root_task()
    tasks_before = _tasks(root)
    acknowledged: dict[str, str] = {}
    async with trio.open_nursery() as outer:
        engines = [await node.start(outer) for node in nodes]
        for engine in engines:
            engine.bootstrap(_configuration(nodes))
        await wait_until(engines, lambda: len(leaders(nodes)) == 1)
        leader = leaders(nodes)[0]
        assert leader.engine is not None
        for i in range(20):
            result = await leader.engine.apply(set_command(f"k{i}", f"v{i}"))
            assert result is None
            acknowledged[f"k{i}"] = f"v{i}"
        assert await leader.engine.apply(get_command("k7")) == "v7"
        index = leader.engine.applied_index
        for node in nodes:
            assert node.engine is not None
            with trio.fail_after(BOUND):
                await node.engine.wait_applied(index)
            assert node.fsm.data == acknowledged
        stats = leader.engine.stats()
        assert stats["state"] == "Leader"
        assert stats["num_peers"] == "2"
        assert int(stats["commit_index"]) >= index

        # A follower refuses client writes with the core's text.
        follower = next(n for n in nodes if n is not leader)
        assert follower.engine is not None
        with pytest.raises(RaftError, match="node is not the leader"):
            await follower.engine.apply(set_command("x", "y"))

        # Kill the leader's nursery: the other two elect a new leader, nothing is lost.
        leader.kill()
        await trio.testing.wait_all_tasks_blocked()
        assert not leader.engine.is_leader
        assert leader.engine.stats()["state"] == "Shutdown"
        with pytest.raises(RaftError, match="raft is already shutdown"):
            await leader.engine.apply(set_command("x", "y"))
        survivors = [n for n in nodes if n is not leader]
        survivor_engines = [n.engine for n in survivors if n.engine is not None]
        await wait_until(survivor_engines, lambda: len(leaders(survivors)) == 1)
        new_leader = leaders(survivors)[0]
        assert new_leader.engine is not None
        for i in range(20, 30):
            await new_leader.engine.apply(set_command(f"k{i}", f"v{i}"))
            acknowledged[f"k{i}"] = f"v{i}"
        index = new_leader.engine.applied_index
        for node in survivors:
            assert node.engine is not None
            with trio.fail_after(BOUND):
                await node.engine.wait_applied(index)
            assert node.fsm.data == acknowledged

        # The old leader restarts from its (memory) store and catches up.
        await leader.start(outer)
        assert leader.engine is not None
        with trio.fail_after(BOUND):
            await leader.engine.wait_applied(index)
        assert leader.fsm.data == acknowledged
        outer.cancel_scope.cancel()
    for node in nodes:
        assert not node.running
    assert _tasks(root) == tasks_before


async def test_a_node_far_behind_catches_up_through_install_snapshot(
    tmp_path: Path, jump_clock: trio.testing.MockClock
) -> None:
    net = MemNet()
    small = dict(snapshot_threshold=8, trailing_logs=4, snapshot_interval=0.5)
    nodes = [MemNode(net, f"n{i}", tmp_path, **small) for i in (1, 2, 3)]
    for node in nodes:
        net.nodes[node.address] = node
    acknowledged: dict[str, str] = {}
    async with trio.open_nursery() as outer:
        engines = [await node.start(outer) for node in nodes]
        for engine in engines:
            engine.bootstrap(_configuration(nodes))
        await wait_until(engines, lambda: len(leaders(nodes)) == 1)
        leader = leaders(nodes)[0]
        lagging = next(n for n in nodes if n is not leader)
        lagging.kill()
        assert leader.engine is not None
        for i in range(60):
            await leader.engine.apply(set_command(f"k{i}", f"v{i}"))
            acknowledged[f"k{i}"] = f"v{i}"
        # Wait until the leader has snapshotted and compacted past what the laggard holds.
        with trio.fail_after(BOUND):
            await leader.engine.wait_snapshot(20)
        assert leader.engine.core.first_index > lagging.store.last_index() + 1
        await lagging.start(outer)
        assert lagging.engine is not None
        with trio.fail_after(BOUND):
            await lagging.engine.wait_applied(leader.engine.applied_index)
        assert lagging.fsm.data == acknowledged
        assert int(lagging.engine.stats()["last_snapshot_index"]) >= 20
        outer.cancel_scope.cancel()


# ============================================================================ the inbound side


async def test_inbound_answers_pipelined_requests_in_order_while_reading_on(
    jump_clock: trio.testing.MockClock,
) -> None:
    """The engine's inbound path over a byte-1 stream: requests keep being read while the
    first one is unanswered, answers go out in arrival order."""
    from agentrpc.raft.transport import InboundCall
    from agentrpc.raft.wire import NEED_DATA, ResponseDecoder, ResponseReceived, RPCType

    calls: list[InboundCall] = []
    all_read = trio.Event()

    def sink(call: InboundCall) -> None:
        calls.append(call)
        if len(calls) == 5:
            all_read.set()

    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_inbound, server, "peer", sink)
        for i in range(5):
            request = AppendEntriesRequest(term=1, leader=b"a", prev_log_entry=i, prev_log_term=1)
            await client.send_all(encode_request(request))
        with trio.fail_after(5):
            await all_read.wait()
        # Answer the later ones first: nothing may be written before the first answer.
        for i in (4, 3, 2, 1):
            calls[i].answer("", AppendEntriesResponse(term=1, last_log=i, success=True))
        with trio.move_on_after(1):
            data = await client.receive_some()
            pytest.fail(f"answered out of order: {data!r}")
        calls[0].answer("", AppendEntriesResponse(term=1, last_log=0, success=True))
        decoder = ResponseDecoder()
        for _ in range(5):
            decoder.expect(RPCType.APPEND_ENTRIES)
        seen: list[int] = []
        with trio.fail_after(5):
            while len(seen) < 5:
                event = decoder.next_event()
                if event is NEED_DATA:
                    decoder.feed(await client.receive_some())
                    continue
                assert isinstance(event, ResponseReceived)
                assert isinstance(event.response, AppendEntriesResponse)
                seen.append(event.response.last_log)
        assert seen == [0, 1, 2, 3, 4]
        await client.aclose()


async def test_inbound_bad_input_closes_only_that_connection() -> None:
    client, server = trio.testing.memory_stream_pair()
    with pytest.RaisesGroup(
        pytest.RaisesExc(Exception, match="unknown rpc type 9"), flatten_subgroups=True
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_inbound, server, "peer", lambda call: None)
            await client.send_all(b"\x09\x80")
    client2, server2 = trio.testing.memory_stream_pair()
    limits = TransportLimits(max_request_size=1024)
    with pytest.RaisesGroup(
        pytest.RaisesExc(Exception, match="1024-byte limit"), flatten_subgroups=True
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_inbound, server2, "peer", lambda call: None, limits)
            huge = RequestVoteRequest(
                term=1, candidate=b"x" * 4096, last_log_index=0, last_log_term=0
            )
            await client2.send_all(encode_request(huge))


# ============================================================================ loopback ports


class PortNode:
    """An engine behind a real server port on 127.0.0.1 with SQLite and file snapshots."""

    def __init__(
        self, node_id: str, base: Path, tls: TLSConfig | None = None, **overrides: Any
    ) -> None:
        self.id = node_id
        self.tls = tls
        self.overrides = overrides
        self.base = base / node_id
        self.address = ""
        self.engine: RaftEngine | None = None
        self.fsm = KVStateMachine()
        self.scope: trio.CancelScope | None = None
        self.running = False
        self.stopped = trio.Event()
        self.port_number = 0
        self.log_sink = io.StringIO()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from agentrpc.logs import DEBUG, LogHub
        from agentrpc.serverport.endpoints import Endpoints
        from agentrpc.serverport.server import ServerPort

        self.stopped = trio.Event()
        hub = LogHub(DEBUG, sink=self.log_sink)
        bind = f"127.0.0.1:{self.port_number}"
        port = ServerPort(bind, Endpoints(), self.tls, hub.logger("raft"), None, drain_timeout=0.5)
        store: SQLiteStore | None = None
        try:
            with trio.CancelScope() as self.scope:
                async with trio.open_nursery() as nursery:
                    address = await nursery.start(port.run)
                    self.port_number = address.port
                    self.address = f"127.0.0.1:{address.port}"
                    store = SQLiteStore(self.base / "raft.db")
                    self.fsm = KVStateMachine()
                    self.engine = RaftEngine(
                        raft_config(self.id, self.address, **self.overrides),
                        logs=store,
                        stable=store,
                        snapshots=FileSnapshotStore(self.base),
                        fsm=self.fsm,
                        transport=RaftTransport(
                            tcp_dialer if self.tls is None else tls_dialer(self.tls)
                        ),
                    )
                    port.router.set_raft_handler(self.engine.handle_connection)
                    await nursery.start(self.engine.run)
                    self.running = True
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            # After the nursery: the engine's tasks (and their store calls) are done.
            self.running = False
            port.shutdown()
            if store is not None:
                store.close()
            self.stopped.set()


@asynccontextmanager
async def port_cluster(
    base: Path, tls: TLSConfig | None = None, **overrides: Any
) -> AsyncIterator[tuple[trio.Nursery, list[PortNode]]]:
    nodes = [PortNode(f"s{i}", base, tls, **overrides) for i in (1, 2, 3)]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        yield nursery, nodes
        nursery.cancel_scope.cancel()


def port_leaders(nodes: list[PortNode]) -> list[PortNode]:
    return [n for n in nodes if n.running and n.engine is not None and n.engine.is_leader]


async def test_three_servers_over_loopback_byte_1_with_sqlite_and_a_restart(
    tmp_path: Path,
) -> None:
    acknowledged: dict[str, str] = {}
    async with port_cluster(tmp_path) as (nursery, nodes):
        engines = [n.engine for n in nodes if n.engine is not None]
        configuration = Configuration(tuple(Server(n.id, n.address) for n in nodes))
        for engine in engines:
            engine.bootstrap(configuration)
        await wait_until(engines, lambda: len(port_leaders(nodes)) == 1)
        leader = port_leaders(nodes)[0]
        assert leader.engine is not None
        with trio.fail_after(BOUND):
            async with trio.open_nursery() as writers:
                for w in range(8):

                    async def write(w: int = w) -> None:
                        assert leader.engine is not None
                        for i in range(10):
                            await leader.engine.apply(set_command(f"w{w}-{i}", str(i)))
                            acknowledged[f"w{w}-{i}"] = str(i)

                    writers.start_soon(write)
        # Garbage after byte 1 closes only that connection, with a log line.
        follower = next(n for n in nodes if n is not leader)
        with trio.fail_after(BOUND):
            raw = await trio.open_tcp_stream("127.0.0.1", follower.port_number)
            await raw.send_all(b"\x01\x09\x80")
            assert await _read_to_eof(raw) == b""
        assert "unknown rpc type 9" in follower.log_sink.getvalue()
        await leader.engine.apply(set_command("after-garbage", "ok"))
        acknowledged["after-garbage"] = "ok"

        # A follower is stopped and restarted from its SQLite store; it catches up.
        assert follower.scope is not None
        follower.scope.cancel()
        with trio.fail_after(BOUND):
            await follower.stopped.wait()
        for i in range(10):
            await leader.engine.apply(set_command(f"late{i}", "x"))
            acknowledged[f"late{i}"] = "x"
        await nursery.start(follower.run)
        assert follower.engine is not None
        with trio.fail_after(BOUND):
            await follower.engine.wait_applied(leader.engine.applied_index)
        assert follower.fsm.data == acknowledged
        assert follower.engine.stats()["state"] == "Follower"
        assert follower.engine.leader_address == leader.address


async def _read_to_eof(stream: trio.abc.ReceiveStream) -> bytes:
    data = bytearray()
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def test_byte_1_without_a_raft_handler_is_refused_and_with_one_is_routed() -> None:
    from agentrpc.logs import DEBUG, LogHub
    from agentrpc.serverport.endpoints import Endpoints
    from agentrpc.serverport.server import ServerPort

    sink = io.StringIO()
    port = ServerPort(
        "127.0.0.1:0", Endpoints(), None, LogHub(DEBUG, sink=sink).logger("rpc"), None,
        drain_timeout=0.5,
    )  # fmt: skip
    routed: list[tuple[bytes, str]] = []

    async def handler(stream: trio.abc.Stream, peer: str) -> None:
        routed.append((await stream.receive_some(16), peer))

    async with trio.open_nursery() as nursery:
        address = await nursery.start(port.run)
        with trio.fail_after(10):
            raw = await trio.open_tcp_stream("127.0.0.1", address.port)
            await raw.send_all(b"\x01hello")
            assert await _read_to_eof(raw) == b""
            assert "unrecognized RPC byte: byte=1" in sink.getvalue()
            assert routed == []
            port.router.set_raft_handler(handler)
            raw = await trio.open_tcp_stream("127.0.0.1", address.port)
            await raw.send_all(b"\x01hello")
            assert await _read_to_eof(raw) == b""
            assert routed and routed[0][0] == b"hello"
            assert port.router.stats.unrecognized == 1
            port.router.set_raft_handler(None)
            raw = await trio.open_tcp_stream("127.0.0.1", address.port)
            await raw.send_all(b"\x01hello")
            assert await _read_to_eof(raw) == b""
            # (The second line of the kind within a second is throttled: count instead.)
            assert port.router.stats.unrecognized == 2
            assert len(routed) == 1
        port.shutdown()


async def test_raft_under_tls_byte_3_then_byte_1(tmp_path: Path) -> None:
    """With verify_incoming, plain byte 1 is refused; our servers dial with byte 3, a TLS
    handshake and byte 1 inside, and replicate."""
    from serverport.sp_helpers import make_tls_files

    (tmp_path / "tls").mkdir()
    files = make_tls_files(tmp_path / "tls")
    tls = TLSConfig(
        ca_file=files.ca,
        cert_file=files.server_cert,
        key_file=files.server_key,
        verify_incoming=True,
        verify_outgoing=True,
    )
    async with port_cluster(tmp_path, tls) as (_, nodes):
        engines = [n.engine for n in nodes if n.engine is not None]
        configuration = Configuration(tuple(Server(n.id, n.address) for n in nodes))
        for engine in engines:
            engine.bootstrap(configuration)
        await wait_until(engines, lambda: len(port_leaders(nodes)) == 1)
        leader = port_leaders(nodes)[0]
        assert leader.engine is not None
        for i in range(5):
            await leader.engine.apply(set_command(f"t{i}", "x"))
        for node in nodes:
            assert node.engine is not None
            with trio.fail_after(BOUND):
                await node.engine.wait_applied(leader.engine.applied_index)
            assert node.fsm.data == {f"t{i}": "x" for i in range(5)}
        follower = next(n for n in nodes if n is not leader)
        with trio.fail_after(BOUND):
            raw = await trio.open_tcp_stream("127.0.0.1", follower.port_number)
            await raw.send_all(b"\x01\x00")
            assert await _read_to_eof(raw) == b""
        assert "Non-TLS connection attempted" in follower.log_sink.getvalue()


async def test_transport_pools_three_connections_per_peer_and_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from agentrpc.raft.transport import InboundCall
    from agentrpc.raft.wire import RequestVoteResponse

    dials = 0
    answer = True

    def sink(call: InboundCall) -> None:
        if answer:
            call.answer("", RequestVoteResponse(term=1, granted=True))

    async with trio.open_nursery() as nursery:

        async def serve(stream: trio.abc.Stream) -> None:
            assert await stream.receive_some(1) == b"\x01"
            try:
                await serve_inbound(stream, "peer", sink)
            except* (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async def dial(address: str) -> trio.abc.Stream:
            nonlocal dials
            await trio.lowlevel.checkpoint()
            dials += 1
            client, server = trio.testing.memory_stream_pair()
            nursery.start_soon(serve, server)
            return client

        transport = RaftTransport(dial)
        request = RequestVoteRequest(term=1, candidate=b"a")
        async with trio.open_nursery() as calls:
            for _ in range(8):
                calls.start_soon(transport.call, "peer:1", request)
        assert dials == 8
        assert transport.pooled("peer:1") == 3
        for _ in range(5):
            result = await transport.call("peer:1", request)
            assert result.error == ""
            assert result.response == RequestVoteResponse(term=1, granted=True)
        assert dials == 8  # sequential calls reuse a pooled connection
        answer = False
        start = trio.current_time()
        with pytest.raises(trio.TooSlowError):
            await transport.call("peer:1", request)
        assert trio.current_time() - start == pytest.approx(10.0)
        assert transport.pooled("peer:1") == 2  # the timed-out connection was closed
        await transport.aclose()
        nursery.cancel_scope.cancel()
