"""Consul's network coordinates in the catalog: the coordinates table (batch updates that drop
unknown nodes, deletion with the node, snapshots in the reference's layout), the
``Coordinate.*`` endpoints over the in-process call path (validation, the update queue and its
flush in batches, blocking ``ListNodes`` woken exactly by coordinate changes, forwarding, the
WAN view of ``ListDatacenters``)."""

from __future__ import annotations

import ipaddress
import math
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from catalog_helpers import DC, Driver, assert_go_key_order, command, in_process
from hypothesis import given, settings, strategies as st

from agentrpc.catalog.consensus import ApplyError
from agentrpc.catalog.constants import IGNORE_UNKNOWN_TYPE_FLAG, MessageType
from agentrpc.catalog.coordinates import (
    COORDINATE_UPDATE_BATCH_SIZE,
    COORDINATE_UPDATE_MAX_BATCHES,
    CoordinateEndpoints,
    go_coordinate_text,
)
from agentrpc.catalog.fsm import CommandDecodeError, ConsulFSM, encode_command
from agentrpc.catalog.service import install
from agentrpc.catalog.state_store import NodeCoordinate
from agentrpc.catalog.structs import RegisterRequest
from agentrpc.gossip.coordinate import Coordinate
from agentrpc.log_protocol import CaptureLog
from agentrpc.protocol.bodies import Member
from agentrpc.raft.log import LogEntry, LogType
from agentrpc.serverport.endpoints import EndpointError, Endpoints, RemoteError
from agentrpc.serverport.server import ServerPort

SECOND = 1_000_000_000
REG = MessageType.REGISTER
DEREG = MessageType.DEREGISTER
BATCH = MessageType.COORDINATE_BATCH_UPDATE


def coord(x: float = 0.0, *, dims: int = 8, error: float = 1.5) -> Coordinate:
    return Coordinate((x,) + (0.0,) * (dims - 1), error, 0.0, 1e-05)


def wire(c: Coordinate) -> dict[str, Any]:
    return {"Adjustment": c.adjustment, "Error": c.error, "Height": c.height, "Vec": list(c.vec)}


def update_args(node: str, c: Coordinate | None, dc: str = DC) -> dict[str, Any]:
    return {"Datacenter": dc, "Node": node, "Coord": None if c is None else wire(c), "Token": ""}


async def register(env: Any, *nodes: str) -> None:
    for node in nodes:
        await env.call("Catalog.Register", {"Datacenter": DC, "Node": node, "Address": "10.0.0.1"})


def batch_entry(index: int, entries: list[tuple[str, Coordinate]]) -> LogEntry:
    body = [NodeCoordinate(n, c).to_wire() for n, c in entries]
    data = bytes([BATCH | IGNORE_UNKNOWN_TYPE_FLAG]) + msgpack.packb(body, use_bin_type=False)
    return LogEntry(index, 1, LogType.COMMAND, data)


# ------------------------------------------------------------------ the table


def test_batch_update_drops_unknown_nodes_and_moves_the_index_anyway() -> None:
    d = Driver()
    d.node("n1")
    idx = d.next()
    d.store.coordinate_batch_update(
        idx, [NodeCoordinate("n1", coord(1.0)), NodeCoordinate("ghost", coord(2.0))]
    )
    index, coords = d.store.coordinates()
    assert index == idx
    assert [(c.node, c.coord) for c in coords] == [("n1", coord(1.0))]
    assert d.store.coordinate_get("ghost") is None
    # A batch of unknown nodes only: nothing stored, the index still moves (as memdb's).
    later = d.next()
    d.store.coordinate_batch_update(later, [NodeCoordinate("ghost", coord(3.0))])
    assert d.store.coordinates()[0] == later
    assert d.store.coordinate_get("n1") == coord(1.0)
    changes = d.store.take_changes()
    assert "coordinates" in changes.tables
    d.store.check_invariants()


def test_a_nodes_coordinate_goes_with_the_node() -> None:
    d = Driver()
    d.node("n1")
    d.node("n2")
    d.store.coordinate_batch_update(
        d.next(), [NodeCoordinate("n1", coord(1.0)), NodeCoordinate("n2", coord(2.0))]
    )
    d.store.take_changes()
    gone = d.next()
    d.store.delete_node(gone, "n1", d.now)
    index, coords = d.store.coordinates()
    assert index == gone and [c.node for c in coords] == ["n2"]
    assert "coordinates" in d.store.take_changes().tables
    # Deleting a node without a coordinate leaves the coordinates table alone.
    d.node("n3")
    d.store.take_changes()
    d.store.delete_node(d.next(), "n3", d.now)
    assert d.store.coordinates()[0] == gone
    assert "coordinates" not in d.store.take_changes().tables
    d.store.check_invariants()


def test_the_fsm_applies_a_batch_sent_with_the_ignore_flag() -> None:
    fsm = ConsulFSM()
    fsm.apply(command(2, REG, {"Node": "n1", "Address": "10.0.0.1"}))
    assert fsm.apply(batch_entry(3, [("n1", coord(0.5)), ("nope", coord(0.7))])) is None
    assert fsm.store.coordinate_get("n1") == coord(0.5)
    assert fsm.store.coordinates()[0] == 3
    assert fsm.ignored == 0  # known, so applied, not skipped
    # A body that does not decode stops the FSM (the reference panics).
    bad = LogEntry(4, 1, LogType.COMMAND, encode_command(BATCH, {"Node": "n1"}))
    with pytest.raises(CommandDecodeError):
        fsm.apply(bad)
    nil_element = LogEntry(5, 1, LogType.COMMAND, bytes([BATCH]) + msgpack.packb([None]))
    with pytest.raises(CommandDecodeError):
        fsm.apply(nil_element)


def _records(data: bytes) -> list[tuple[int | None, Any]]:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    out: list[tuple[int | None, Any]] = [(None, unpacker.unpack())]
    while kind := unpacker.read_bytes(1):
        out.append((kind[0], unpacker.unpack()))
    return out


def test_snapshot_writes_one_batch_per_node_after_the_nodes_and_restores_it() -> None:
    fsm = ConsulFSM()
    fsm.apply(command(2, REG, {"Node": "b", "Address": "10.0.0.2"}))
    fsm.apply(command(3, REG, {"Node": "a", "Address": "10.0.0.1"}))
    fsm.apply(batch_entry(4, [("b", coord(2.0)), ("a", coord(1.0))]))
    fsm.apply(command(5, MessageType.KVS, {"Op": "set", "DirEnt": {"Key": "k", "Value": b"v"}}))
    data = fsm.snapshot_bytes()
    records = _records(data)
    for _, record in records:
        assert_go_key_order(record)
    assert records[0][1]["Indexes"]["coordinates"] == 4
    kinds = [kind for kind, _ in records[1:]]
    assert kinds == [0, 0, 6, 6, 2]
    assert [r for k, r in records[1:] if k == 6] == [
        [{"Coord": wire(coord(1.0)), "Node": "a"}],
        [{"Coord": wire(coord(2.0)), "Node": "b"}],
    ]
    copy = ConsulFSM()
    copy.restore_bytes(data)
    assert copy.view() == fsm.view()
    assert copy.store.coordinates() == fsm.store.coordinates()
    assert copy.snapshot_bytes() == data
    copy.store.check_invariants()


def test_a_reference_snapshot_gives_its_coordinates_the_last_index() -> None:
    pack = msgpack.Packer(use_bin_type=False).pack
    node = {"Address": "10.0.0.5", "Node": "go1"}
    data = b"".join(
        [
            pack({"LastIndex": 42}),
            b"\x00" + pack(node),
            b"\x06" + pack([{"Coord": wire(coord(0.25)), "Node": "go1"}]),
        ]
    )
    fsm = ConsulFSM()
    fsm.restore_bytes(data)
    assert fsm.store.coordinates() == (42, [NodeCoordinate("go1", coord(0.25))])
    assert fsm.take_changes().everything


NODES = st.sampled_from(["a", "b", "c"])


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("reg"), NODES),
            st.tuples(st.just("dereg"), NODES),
            st.tuples(
                st.just("coords"),
                st.lists(st.tuples(NODES, st.floats(-1, 1, allow_nan=False)), max_size=4),
            ),
        ),
        max_size=25,
    )
)
def test_coordinates_survive_any_history_and_a_snapshot(history: list[tuple[str, Any]]) -> None:
    fsm = ConsulFSM()
    for index, (kind, arg) in enumerate(history, start=2):
        if kind == "reg":
            fsm.apply(command(index, REG, {"Node": arg, "Address": "10.0.0.1"}))
        elif kind == "dereg":
            fsm.apply(command(index, DEREG, {"Node": arg}))
        else:
            fsm.apply(batch_entry(index, [(n, coord(x)) for n, x in arg]))
        fsm.store.check_invariants()
    data = fsm.snapshot_bytes()
    copy = ConsulFSM()
    copy.restore_bytes(data)
    assert copy.view() == fsm.view()
    copy.store.check_invariants()


# ------------------------------------------------------------------ the endpoints


def test_go_text_of_a_coordinate() -> None:
    assert go_coordinate_text(None) == "<nil>"
    c = Coordinate((0.0, 1.5, -2e-05, 1234567.0), 1.5, 0.0, 1e-05)
    assert go_coordinate_text(c) == "&{[0 1.5 -2e-05 1.234567e+06] 1.5 0 1e-05}"


async def test_update_is_queued_then_flushed_and_listed() -> None:
    env = in_process()
    await register(env, "n1", "n2")
    assert await env.call("Coordinate.Update", update_args("n1", coord(1.0))) == {}
    assert await env.call("Coordinate.Update", update_args("n1", coord(1.25))) == {}
    assert await env.call("Coordinate.Update", update_args("ghost", coord(3.0))) == {}
    coordinates = env.catalog.coordinates
    assert coordinates.pending == 2  # one per node, the latest wins
    listed = await env.call("Coordinate.ListNodes", {"Datacenter": DC})
    assert listed["Coordinates"] is None  # nothing reaches the table before the flush
    assert await coordinates.flush() == 1
    assert coordinates.pending == 0
    listed = await env.call("Coordinate.ListNodes", {"Datacenter": DC})
    assert_go_key_order(listed)
    assert listed["Coordinates"] == [{"Coord": wire(coord(1.25)), "Node": "n1"}]
    assert listed["Index"] == env.fsm.store.coordinates()[0] > 1
    assert listed["KnownLeader"] is True and listed["LastContact"] == 0
    assert await coordinates.flush() == 0  # an empty queue applies nothing
    assert env.fsm.last_index == listed["Index"]


async def test_update_refuses_bad_coordinates_with_the_reference_text() -> None:
    env = in_process()
    await register(env, "n1")
    with pytest.raises(RemoteError) as excinfo:
        await env.call("Coordinate.Update", update_args("n1", coord(1.0, dims=4)))
    assert excinfo.value.error == "rejected bad coordinate: &{[1 0 0 0] 1.5 0 1e-05}"
    with pytest.raises(RemoteError) as excinfo:
        await env.call("Coordinate.Update", update_args("n1", None))
    assert excinfo.value.error == "rejected bad coordinate: <nil>"
    with pytest.raises(RemoteError) as excinfo:
        await env.call("Coordinate.Update", update_args("n1", coord(math.nan)))
    assert excinfo.value.error.startswith("rejected bad coordinate: &{[NaN 0")
    assert env.catalog.coordinates.pending == 0


async def test_update_on_a_server_without_coordinates_fails() -> None:
    env = in_process(lan_coordinate=lambda: None)
    with pytest.raises(RemoteError) as excinfo:
        await env.call("Coordinate.Update", update_args("n1", coord()))
    assert excinfo.value.error == "Coordinates are disabled"


class FakeApplier:
    """Counts batches; fails from the ``fail_at``-th on."""

    def __init__(self, inner: Any, fail_at: int = 0) -> None:
        self.inner = inner
        self.bodies: list[Any] = []
        self.types: list[int] = []
        self.fail_at = fail_at

    async def apply(self, msg_type: int, body: Any) -> Any:
        if self.fail_at and len(self.bodies) + 1 >= self.fail_at:
            await trio.lowlevel.checkpoint()
            raise ApplyError("leadership lost while committing log")
        self.bodies.append(body)
        self.types.append(msg_type)
        return await self.inner.apply(msg_type, body)


def endpoints_over(env: Any, applier: Any, **kwargs: Any) -> CoordinateEndpoints:
    catalog = env.catalog
    return CoordinateEndpoints(
        catalog.hub,
        applier,
        catalog.facts,
        catalog.forwarder,
        datacenter=DC,
        logger=env.log,
        **kwargs,
    )


async def test_a_flush_applies_at_most_five_batches_of_128_and_discards_the_rest() -> None:
    env = in_process()
    names = [f"n{i:04d}" for i in range(700)]
    for name in names:
        index = env.fsm.last_index + 1
        env.fsm.store.ensure_registration(index, RegisterRequest(node=name, address="1.2.3.4"), 0)
        env.fsm.last_index = index
    applier = FakeApplier(env.catalog.applier)
    coords = endpoints_over(env, applier)
    for position, name in enumerate(names):
        await coords.update(update_args(name, coord(position / 1000)))
    limit = COORDINATE_UPDATE_BATCH_SIZE * COORDINATE_UPDATE_MAX_BATCHES
    assert coords.pending == limit == 640  # the queue never holds more than one flush applies
    await coords.update(update_args(names[0], coord(0.9)))  # a queued node is still updated
    assert await coords.flush() == COORDINATE_UPDATE_MAX_BATCHES
    assert [len(body) for body in applier.bodies] == [128] * 5
    assert set(applier.types) == {BATCH | IGNORE_UNKNOWN_TYPE_FLAG}
    assert "consul.coordinate: Discarded 60 coordinate updates" in env.log.text()
    index, stored = env.fsm.store.coordinates()
    assert len(stored) == 640 and env.fsm.store.coordinate_get(names[0]) == coord(0.9)
    assert env.fsm.store.coordinate_get(names[-1]) is None


async def test_a_failed_batch_ends_the_flush_with_the_reference_warning() -> None:
    env = in_process()
    await register(env, "a", "b", "c")
    applier = FakeApplier(env.catalog.applier, fail_at=2)
    coords = endpoints_over(env, applier, batch_size=1, max_batches=3)
    for name in ("a", "b", "c"):
        await coords.update(update_args(name, coord(0.1)))
    assert await coords.flush() == 1
    assert len(applier.bodies) == 1 and coords.pending == 0
    assert "consul.coordinate: Batch update failed: leadership lost" in env.log.text()


async def test_the_queue_is_flushed_every_update_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    env = in_process(coordinate_update_period=5.0)
    await register(env, "n1")
    async with trio.open_nursery() as nursery:
        await nursery.start(env.catalog.coordinates.run)
        start = trio.current_time()
        await env.call("Coordinate.Update", update_args("n1", coord(0.3)))
        empty = await env.call("Coordinate.ListNodes", {"Datacenter": DC})
        args = {"Datacenter": DC, "MinQueryIndex": empty["Index"], "MaxQueryTime": 60 * SECOND}
        listed = await env.call("Coordinate.ListNodes", args)  # woken by the flush
        assert 4.99 <= trio.current_time() - start <= 5.01
        assert [c["Node"] for c in listed["Coordinates"]] == ["n1"]
        nursery.cancel_scope.cancel()


async def test_list_nodes_blocks_until_the_coordinates_change(
    autojump_clock: trio.testing.MockClock,
) -> None:
    env = in_process()
    await register(env, "n1", "n2")
    await env.call("Coordinate.Update", update_args("n1", coord(0.1)))
    await env.catalog.coordinates.flush()
    first = await env.call("Coordinate.ListNodes", {"Datacenter": DC})
    index = first["Index"]
    result: dict[str, Any] = {}
    args = {"Datacenter": DC, "MinQueryIndex": index, "MaxQueryTime": 60 * SECOND}

    async def blocked() -> None:
        result["reply"] = await env.call("Coordinate.ListNodes", args)
        result["at"] = trio.current_time()

    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        nursery.start_soon(blocked)
        await trio.testing.wait_all_tasks_blocked()
        assert env.catalog.hub.waiting == 1
        # Other tables do not wake it: a KV write, a new node.
        await env.call(
            "KVS.Apply", {"Datacenter": DC, "Op": "set", "DirEnt": {"Key": "k", "Value": b"v"}}
        )
        await register(env, "n3")
        await trio.testing.wait_all_tasks_blocked()
        assert "reply" not in result and env.catalog.hub.woken == 0
        await env.call("Coordinate.Update", update_args("n2", coord(0.2)))
        await env.catalog.coordinates.flush()
    assert result["at"] == started
    reply = result["reply"]
    assert reply["Index"] > index
    assert [c["Node"] for c in reply["Coordinates"]] == ["n1", "n2"]
    # Deleting a node with a coordinate wakes it too.
    args["MinQueryIndex"] = reply["Index"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked)
        await trio.testing.wait_all_tasks_blocked()
        await env.call("Catalog.Deregister", {"Datacenter": DC, "Node": "n1"})
    assert [c["Node"] for c in result["reply"]["Coordinates"]] == ["n2"]
    # With no change, it answers the same index after the wait.
    args["MinQueryIndex"] = result["reply"]["Index"]
    args["MaxQueryTime"] = 2 * SECOND
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        nursery.start_soon(blocked)
    assert result["reply"]["Index"] == args["MinQueryIndex"]
    assert 2.0 <= result["at"] - started <= 2.0 + 2.0 / 16 + 0.01


async def test_an_empty_table_answers_index_one() -> None:
    env = in_process()
    listed = await env.call("Coordinate.ListNodes", {"Datacenter": DC})
    assert listed["Index"] == 1 and listed["Coordinates"] is None


class RecordingForwarder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    async def forward_leader(self, method: str, body: Any) -> Any:
        await trio.lowlevel.checkpoint()
        self.calls.append(("leader", method, body))
        return {"Index": 7, "Coordinates": None} if method.endswith("ListNodes") else {}

    async def forward_datacenter(self, datacenter: str, method: str, body: Any) -> Any:
        await trio.lowlevel.checkpoint()
        self.calls.append((datacenter, method, body))
        return {}

    def datacenters(self) -> list[str]:
        return [DC]


class Follower:
    def is_leader(self) -> bool:
        return False

    def leader(self) -> str:
        return "127.0.0.2:8300"

    def last_contact(self) -> float | None:
        return trio.current_time()

    def peers(self) -> list[str]:
        return []

    async def verify_leader(self) -> None:
        await trio.lowlevel.checkpoint()
        raise EndpointError("not leader")


async def test_updates_and_reads_are_forwarded_as_the_reference_forwards_them() -> None:
    forwarder = RecordingForwarder()
    env = in_process(facts=Follower(), forwarder=forwarder)
    args = update_args("n1", coord())
    assert await env.call("Coordinate.Update", args) == {}
    assert await env.call("Coordinate.Update", update_args("n1", coord(), dc="dc2")) == {}
    listed = await env.call("Coordinate.ListNodes", {"Datacenter": DC})
    assert listed["Index"] == 7
    stale = await env.call("Coordinate.ListNodes", {"Datacenter": DC, "AllowStale": True})
    assert stale["Index"] == 1  # a stale read is served here
    assert [(where, method) for where, method, _ in forwarder.calls] == [
        ("leader", "Coordinate.Update"),
        ("dc2", "Coordinate.Update"),
        ("leader", "Coordinate.ListNodes"),
    ]
    assert forwarder.calls[0][2]["Node"] == "n1"
    assert env.catalog.coordinates.pending == 0  # a follower queues nothing
    # ListDatacenters is never forwarded.
    assert await env.call("Coordinate.ListDatacenters", {}) == []


def server_member(name: str, dc: str, status: str = "alive") -> Member:
    tags = {"role": "consul", "dc": dc, "port": "8300", "vsn": "2"}
    return Member(name, ipaddress.ip_address("127.0.0.1"), 8302, tags, status)


async def test_list_datacenters_groups_the_wan_servers_coordinates_by_datacenter() -> None:
    members = [
        server_member("s2.dc2", "dc2"),
        server_member("s1.dc1", "dc1"),
        server_member("s9.dc2", "dc2"),
        server_member("s3.dc2", "dc2", status="failed"),
        server_member("s1.dc3", "dc3"),
        Member("client", ipaddress.ip_address("127.0.0.1"), 8302, {"role": "node"}),
    ]
    known = {"s1.dc1": coord(0.1), "s2.dc2": coord(0.2), "s9.dc2": coord(0.9)}
    known["s3.dc2"] = coord(0.3)
    env = in_process(wan_members=lambda: members, wan_coordinate=known.get)
    reply = await env.call("Coordinate.ListDatacenters", {})
    assert_go_key_order(reply)
    assert reply == [
        {"Coordinates": [{"Coord": wire(coord(0.1)), "Node": "s1"}], "Datacenter": "dc1"},
        {
            "Coordinates": [
                {"Coord": wire(coord(0.2)), "Node": "s2"},
                {"Coord": wire(coord(0.9)), "Node": "s9"},
            ],
            "Datacenter": "dc2",
        },
        {"Coordinates": None, "Datacenter": "dc3"},  # a server but no coordinate of it yet
    ]


async def test_install_registers_the_three_endpoints() -> None:
    endpoints = Endpoints()
    catalog = install(endpoints, datacenter=DC, node_name="s1", logger=CaptureLog())
    port = ServerPort("127.0.0.1:0", endpoints, None, CaptureLog())
    for method in ("Coordinate.ListNodes", "Coordinate.ListDatacenters"):
        await port.call_local(method, {"Datacenter": DC})
    assert catalog.coordinates.update_period == 5.0
    with pytest.raises(RemoteError) as excinfo:
        await port.call_local("Coordinate.Update", {"Node": "x", "Coord": 5})
    assert "Coord" in excinfo.value.error
