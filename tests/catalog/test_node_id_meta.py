"""Consul 0.7.3+/0.8's node ID and node metadata through the catalog: the structs (0.7.0
bodies without the fields still decode), the state store (ChangesNode, the ID-alias refusal),
the ``NodeMetaFilters`` of the read endpoints, the ``Bad node ID`` and node-meta validation
texts, and snapshots carrying both."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from catalog_helpers import DC, Driver, assert_go_key_order, command, in_process
from hypothesis import given, settings, strategies as st

from agentrpc.catalog.constants import MessageType
from agentrpc.catalog.fsm import ConsulFSM
from agentrpc.catalog.rules import (
    RuleError,
    node_id_error,
    prepare_register,
    validate_node_meta,
)
from agentrpc.catalog.state_store import StateError
from agentrpc.catalog.structs import (
    DCSpecificRequest,
    Node,
    NodeService,
    QueryOptions,
    QuerySource,
    RegisterRequest,
    ServiceSpecificRequest,
    satisfies_meta_filters,
)
from agentrpc.serverport.endpoints import RemoteError

ID1 = "cda916bc-a357-4a19-b886-59419fcee50c"
ID2 = "0e5a2d31-7c3b-4b8e-9f11-2a6c4d5e6f70"
REG = int(MessageType.REGISTER)

_text = st.text(max_size=8)
_maps = st.one_of(st.none(), st.dictionaries(_text, _text, max_size=4))


# ------------------------------------------------------------------ structs


@settings(max_examples=200, deadline=None)
@given(
    st.builds(
        Node,
        _text,
        _text,
        _maps,
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1),
        _text,
        _maps,
    )
)
def test_node_round_trips_through_msgpack(node: Node) -> None:
    wire = node.to_wire()
    assert_go_key_order(wire)
    packed = msgpack.packb(wire, use_bin_type=False, unicode_errors="surrogateescape")
    unpacked = msgpack.unpackb(packed, raw=False, unicode_errors="surrogateescape")
    assert Node.from_wire(unpacked) == node


def test_node_wire_has_id_and_meta_in_gos_order() -> None:
    node = Node("n", "10.0.0.1", {"wan": "1.2.3.4"}, 1, 2, id=ID1, meta={"z": "1", "a": "2"})
    wire = node.to_wire()
    assert list(wire) == [
        "Address", "CreateIndex", "ID", "Meta", "ModifyIndex", "Node", "TaggedAddresses",
    ]  # fmt: skip
    assert wire["ID"] == ID1 and list(wire["Meta"]) == ["a", "z"]
    assert Node("n").to_wire()["ID"] == "" and Node("n").to_wire()["Meta"] is None


def test_bodies_of_a_0_7_0_peer_without_the_fields_still_decode() -> None:
    old_node = {"Address": "a", "CreateIndex": 1, "ModifyIndex": 2, "Node": "n",
                "TaggedAddresses": None}  # fmt: skip
    assert Node.from_wire(old_node) == Node("n", "a", None, 1, 2, id="", meta=None)
    old_register = {"Address": "a", "Check": None, "Checks": None, "Datacenter": DC,
                    "Node": "n", "Service": None, "TaggedAddresses": None, "Token": ""}  # fmt: skip
    request = RegisterRequest.from_wire(old_register)
    assert (request.id, request.node_meta) == ("", None)
    assert DCSpecificRequest.from_wire({"Datacenter": DC}).node_meta_filters is None
    assert ServiceSpecificRequest.from_wire({"ServiceName": "w"}).node_meta_filters is None


def test_register_request_and_reads_carry_the_new_fields() -> None:
    request = RegisterRequest(DC, "n", "a", id=ID1, node_meta={"rack": "r1", "env": "prod"})
    wire = request.to_wire()
    assert_go_key_order(wire)
    assert wire["ID"] == ID1 and wire["NodeMeta"] == {"env": "prod", "rack": "r1"}
    decoded = RegisterRequest.from_wire(wire)
    assert (decoded.id, decoded.node_meta) == (ID1, {"env": "prod", "rack": "r1"})
    options, source = QueryOptions("t", 5), QuerySource(DC, "n")
    reads = [
        DCSpecificRequest(DC, source, options, {"env": "prod"}),
        ServiceSpecificRequest(DC, "web", "", False, source, options, {"a": "1", "b": ""}),
    ]
    for read in reads:
        wire = read.to_wire()
        assert_go_key_order(wire)
        assert wire["NodeMetaFilters"] == read.node_meta_filters
        assert type(read).from_wire(wire) == read
    with pytest.raises(ValueError, match="NodeMetaFilters"):
        DCSpecificRequest.from_wire({"NodeMetaFilters": ["x"]})
    with pytest.raises(ValueError, match="Meta"):
        Node.from_wire({"Node": "n", "Meta": 5})


@given(_maps, st.dictionaries(_text, _text, max_size=3))
def test_satisfies_meta_filters_means_every_pair_is_there(
    meta: dict[str, str] | None, filters: dict[str, str]
) -> None:
    expected = all((meta or {}).get(k) == v and k in (meta or {}) for k, v in filters.items())
    assert satisfies_meta_filters(meta, filters) is expected


# ------------------------------------------------------------------ state store


def test_the_store_keeps_id_and_meta_and_a_register_without_them_clears_them() -> None:
    d = Driver()
    first = d.node("n1", id=ID1, node_meta={"env": "prod"})
    node = d.store.get_node("n1")[1]
    assert node is not None and (node.id, node.meta) == (ID1, {"env": "prod"})
    assert (node.create_index, node.modify_index) == (first, first)
    # The same node again: nothing changes, the index stays.
    d.node("n1", id=ID1, node_meta={"env": "prod"})
    assert d.store.get_node("n1")[1] == node and d.store.table_index("nodes") == first
    # Meta {} is not nil (reflect.DeepEqual): a change.
    empty = d.node("n1", id=ID1, node_meta={})
    assert d.store.get_node("n1")[1] == Node("n1", "10.0.0.1", None, first, empty, ID1, {})
    # A register that omits ID and NodeMeta rebuilds the node without them (0.8's
    # ensureRegistrationTxn), keeping CreateIndex.
    cleared = d.node("n1")
    assert d.store.get_node("n1")[1] == Node("n1", "10.0.0.1", None, first, cleared)
    d.store.check_invariants()


def test_a_node_id_held_by_another_node_is_refused_and_nothing_changes() -> None:
    d = Driver()
    d.node("n1", id=ID1)
    before = d.store.view()
    request = RegisterRequest(
        node="n2", address="10.0.0.2", id=ID1.upper(), service=NodeService("web", "web")
    )
    with pytest.raises(StateError) as caught:
        d.store.ensure_registration(d.next(), request, d.now)
    assert str(caught.value) == (
        f'failed inserting node: node ID "{ID1.upper()}" for node "n2" aliases existing node "n1"'
    )
    # The reference compares the names exactly: another spelling of n1 is refused too.
    with pytest.raises(StateError, match='for node "N1" aliases existing node "n1"'):
        d.store.ensure_registration(d.next(), RegisterRequest(node="N1", address="a", id=ID1), 0)
    assert d.store.view() == before
    # The holder may change its ID; once n1 is gone its IDs are free.
    d.node("n1", id=ID2)
    d.node("n2", address="10.0.0.2", id=ID1)
    d.store.delete_node(d.next(), "n1", d.now)
    d.node("n3", id=ID2)
    d.store.check_invariants()
    assert [(n.node, n.id) for n in d.store.nodes()[1]] == [("n2", ID1), ("n3", ID2)]


def test_the_store_filters_checks_by_node_meta() -> None:
    d = Driver()
    d.check("a", "ca")
    d.check("b", "cb", status="critical")
    d.node("a", node_meta={"env": "prod"})
    meta = {"env": "prod"}
    assert [c.node for c in d.store.checks_in_state("any", meta_filters=meta)[1]] == ["a"]
    assert d.store.checks_in_state("critical", meta_filters=meta)[1] == []
    index, _ = d.store.checks_in_state("any", meta_filters=meta)
    assert index == d.store.table_index("nodes", "checks") > d.store.table_index("checks")


def test_the_store_filters_nodes_and_services_by_meta() -> None:
    d = Driver()
    d.service("a", "web", tags=("x",))
    d.service("b", "web", tags=("y",))
    d.service("c", "db")
    # After the services: a register without NodeMeta (as Driver.service's) clears it.
    d.node("a", node_meta={"env": "prod", "rack": "r1"})
    d.node("b", node_meta={"env": "prod", "rack": "r2"})
    names = lambda found: [n.node for n in found]  # noqa: E731
    assert names(d.store.nodes(meta_filters={"env": "prod"})[1]) == ["a", "b"]
    assert names(d.store.nodes(meta_filters={"env": "prod", "rack": "r2"})[1]) == ["b"]
    assert names(d.store.nodes(meta_filters={"env": "PROD"})[1]) == []
    assert names(d.store.nodes(meta_filters={"rack": ""})[1]) == []
    assert names(d.store.nodes(meta_filters={})[1]) == ["a", "b", "c"]
    index, services = d.store.services(meta_filters={"rack": "r1"})
    assert services == {"web": ["x"]}
    assert index == d.store.table_index("services", "nodes")
    assert d.store.services()[1] == {"db": [], "web": ["x", "y"]}


# ------------------------------------------------------------------ endpoints


async def _register(env: Any, node: str, **extra: Any) -> None:
    body = {"Datacenter": DC, "Node": node, "Address": "10.0.0.1", **extra}
    await env.call("Catalog.Register", body)


async def test_the_read_endpoints_return_id_and_meta_and_filter_by_meta() -> None:
    env = in_process()
    web = {"Service": "web", "Port": 80}
    await _register(env, "a", ID=ID1, NodeMeta={"env": "prod"}, Service=web)
    await _register(env, "b", ID=ID2, NodeMeta={"env": "dev"}, Service=web)
    await _register(env, "c", Service=web, Check={"Name": "up", "ServiceID": "web"})
    every = await env.call("Catalog.ListNodes", {"Datacenter": DC})
    assert [(n["Node"], n["ID"], n["Meta"]) for n in every["Nodes"]] == [
        ("a", ID1, {"env": "prod"}),
        ("b", ID2, {"env": "dev"}),
        ("c", "", None),
    ]
    assert_go_key_order(every)
    prod_f = {"env": "prod"}
    prod = {"Datacenter": DC, "NodeMetaFilters": prod_f}
    nodes = await env.call("Catalog.ListNodes", prod)
    assert [n["Node"] for n in nodes["Nodes"]] == ["a"] and nodes["Index"] == every["Index"]
    none = await env.call("Catalog.ListNodes", {**prod, "NodeMetaFilters": {"env": "qa"}})
    assert none["Nodes"] is None
    services = await env.call("Catalog.ListServices", prod)
    assert services["Services"] == {"web": []}
    query = {"Datacenter": DC, "ServiceName": "web"}
    instances = await env.call("Catalog.ServiceNodes", query)
    row = instances["ServiceNodes"][0]
    assert (row["ID"], row["NodeMeta"]) == (ID1, {"env": "prod"})
    assert_go_key_order(instances)
    dev = await env.call("Catalog.ServiceNodes", {**query, "NodeMetaFilters": {"env": "dev"}})
    assert [r["Node"] for r in dev["ServiceNodes"]] == ["b"]
    assert dev["Index"] == instances["Index"]
    health = await env.call("Health.ServiceNodes", {**query, "NodeMetaFilters": {"env": "dev"}})
    assert [(n["Node"]["Node"], n["Node"]["ID"]) for n in health["Nodes"]] == [("b", ID2)]
    assert (await env.call("Health.ServiceNodes", query))["Nodes"][2]["Node"]["Meta"] is None
    # The health checks of 0.8 filter too, at the index of the nodes and checks tables.
    up = await env.call("Health.ChecksInState", {"State": "any"})
    assert [c["Node"] for c in up["HealthChecks"]] == ["c"]
    gone = await env.call("Health.ChecksInState", {"State": "any", "NodeMetaFilters": prod_f})
    assert gone["HealthChecks"] is None and gone["Index"] >= up["Index"]
    c_checks = await env.call(
        "Health.ServiceChecks", {"ServiceName": "web", "NodeMetaFilters": {"env": "dev"}}
    )
    assert c_checks["HealthChecks"] is None
    assert (await env.call("Health.ServiceChecks", {"ServiceName": "web"}))["HealthChecks"]
    node_services = await env.call("Catalog.NodeServices", {"Datacenter": DC, "Node": "a"})
    assert node_services["NodeServices"]["Node"]["Meta"] == {"env": "prod"}
    dump = await env.call("Internal.NodeInfo", {"Datacenter": DC, "Node": "a"})
    assert (dump["Dump"][0]["ID"], dump["Dump"][0]["Meta"]) == (ID1, {"env": "prod"})
    assert_go_key_order(dump)


async def test_catalog_register_refuses_a_bad_node_id_with_the_reference_text() -> None:
    env = in_process()

    async def error(node_id: str) -> str:
        with pytest.raises(RemoteError) as caught:
            await _register(env, "n", ID=node_id)
        return caught.value.error

    assert await error("nope") == "Bad node ID: uuid string is wrong length"
    assert await error("cda916bc!a357-4a19-b886-59419fcee50c") == (
        "Bad node ID: uuid is improperly formatted"
    )
    assert await error("gda916bc-a357-4a19-b886-59419fcee50c") == (
        "Bad node ID: encoding/hex: invalid byte: U+0067 'g'"
    )
    await _register(env, "n", ID=ID1.upper())
    assert (await env.call("Catalog.ListNodes", {}))["Nodes"][0]["ID"] == ID1.upper()
    # The alias refusal comes back from the FSM as the RPC's error.
    with pytest.raises(RemoteError) as caught:
        await env.call("Catalog.Register", {"Node": "m", "Address": "a", "ID": ID1})
    assert caught.value.error == (
        f'failed inserting node: node ID "{ID1}" for node "m" aliases existing node "n"'
    )


def test_node_id_texts() -> None:
    assert node_id_error(ID1) is None and node_id_error(ID1.upper()) is None
    # Lengths are Go's, in UTF-8 bytes: 18 two-byte characters have the length of a UUID.
    assert node_id_error("é" * 18) == "uuid is improperly formatted"
    assert node_id_error("é" * 36) == "uuid string is wrong length"
    assert node_id_error("cda916bc-a357-4a19-b886-59419fcee5\x00c") == (
        "encoding/hex: invalid byte: U+0000"
    )
    with pytest.raises(RuleError, match=r"^Must provide node and address$"):
        prepare_register(RegisterRequest(node="n", id="bad"))
    assert prepare_register(RegisterRequest(node="n", address="a")).id == ""


# ------------------------------------------------------------------ node-meta validation


@pytest.mark.parametrize(
    ("meta", "text"),
    [
        ({"": "v"}, "Couldn't load metadata pair ('', 'v'): Key cannot be blank"),
        ({"a b": "v"}, "Couldn't load metadata pair ('a b', 'v'): Key contains invalid characters"),
        ({"k\n": "v"}, "Couldn't load metadata pair ('k\n', 'v'): Key contains invalid characters"),
        (
            {"k" * 129: "v"},
            f"Couldn't load metadata pair ('{'k' * 129}', 'v'): Key is too long (limit: 128 "
            "characters)",
        ),
        (
            {"consul-x": "v"},
            "Couldn't load metadata pair ('consul-x', 'v'): Key prefix 'consul-' is reserved for "
            "internal use",
        ),
        (
            {"k": "é" * 257},
            f"Couldn't load metadata pair ('k', '{'é' * 257}'): Value is too long (limit: 512 "
            "characters)",
        ),
        (
            {f"k{i}": "" for i in range(65)},
            "Node metadata cannot contain more than 64 key/value pairs",
        ),
    ],
)
def test_node_meta_validation_texts(meta: dict[str, str], text: str) -> None:
    with pytest.raises(RuleError) as caught:
        validate_node_meta(meta)
    assert str(caught.value) == text


def test_valid_node_meta_passes() -> None:
    validate_node_meta(None)
    validate_node_meta({f"k{i}": "v" * 512 for i in range(64)})
    validate_node_meta({"k" * 128: "", "Az09_-": "x", "consul": "ok", "xconsul-": "ok"})


# ------------------------------------------------------------------ snapshots


def test_snapshots_carry_id_and_meta_and_restore_them() -> None:
    fsm = ConsulFSM()
    body = {"Datacenter": DC, "Node": "n1", "Address": "10.0.0.9", "ID": ID1,
            "NodeMeta": {"env": "prod"}, "Service": {"ID": "web", "Service": "web"}}  # fmt: skip
    fsm.apply(command(2, REG, body))
    fsm.apply(command(3, REG, {"Datacenter": DC, "Node": "n2", "Address": "10.0.0.8"}))
    data = fsm.snapshot_bytes()
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    unpacker.unpack()
    first = (unpacker.read_bytes(1), unpacker.unpack())
    assert first[1]["ID"] == ID1 and first[1]["NodeMeta"] == {"env": "prod"}
    copy = ConsulFSM()
    copy.restore_bytes(data)
    assert copy.view() == fsm.view()
    assert copy.snapshot_bytes() == data
    restored = copy.store.get_node("n1")[1]
    assert restored is not None and (restored.id, restored.meta) == (ID1, {"env": "prod"})
    copy.store.check_invariants()
    # The restored ID index refuses an alias as the original store would.
    refused = copy.apply(command(10, REG, {"Node": "n3", "Address": "a", "ID": ID1}))
    assert "aliases existing node" in str(refused)
