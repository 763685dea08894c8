"""The pure pieces under the endpoints: the waiter registry (against a brute-force oracle),
Go's duration and quoting rules, the wire structs (go-msgpack key order, tolerant decoding),
and the endpoint rules (validation texts, defaults, routing, blocking-query clamps)."""

from __future__ import annotations

import msgpack
import pytest
from catalog_helpers import assert_go_key_order
from hypothesis import given, settings, strategies as st

from agentrpc.catalog.constants import SECOND_NS, SESSION_TTL_MIN_NS
from agentrpc.catalog.go_text import GoDurationError, format_duration, go_quote, parse_duration
from agentrpc.catalog.rules import (
    Route,
    RuleError,
    aggregated_status,
    blocking_wait_ns,
    check_kvs_apply,
    format_session_id,
    prepare_register,
    prepare_session,
    route,
    session_ttl_ns,
)
from agentrpc.catalog.structs import (
    ChecksInStateRequest,
    DCSpecificRequest,
    DeregisterRequest,
    DirEntry,
    HealthCheck,
    KeyListRequest,
    KeyRequest,
    KVSRequest,
    Node,
    NodeService,
    NodeSpecificRequest,
    QueryOptions,
    QuerySource,
    RegisterRequest,
    ServiceSpecificRequest,
    Session,
    SessionRequest,
    SessionSpecificRequest,
    TombstoneRequest,
    WireDecodeError,
)
from agentrpc.catalog.watch import Changes, WaiterRegistry, key_item, prefix_item, table_item

# ------------------------------------------------------------------ the waiter registry

ITEMS = st.one_of(
    st.builds(table_item, st.sampled_from(["nodes", "kvs", "sessions"])),
    st.builds(key_item, st.sampled_from(["", "a", "ab", "a/b", "b"])),
    st.builds(prefix_item, st.sampled_from(["", "a", "a/", "ab", "b/c"])),
)


def _concerns(items: set[tuple[str, str]], changes: Changes) -> bool:
    for kind, name in items:
        if kind == "table" and name in changes.tables:
            return True
        if kind == "key" and name in changes.keys:
            return True
        if kind == "prefix" and any(k.startswith(name) for k in changes.keys):
            return True
    return False


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sets(ITEMS, max_size=4), max_size=8),
    st.sets(st.sampled_from(["nodes", "kvs", "checks"]), max_size=2),
    st.sets(st.sampled_from(["", "a", "ab", "a/b", "a/bc", "b/c/d", "z"]), max_size=3),
    st.lists(st.integers(0, 7), max_size=3),
)
def test_registry_wakes_exactly_the_concerned_waiters(
    registrations: list[set[tuple[str, str]]],
    tables: set[str],
    keys: set[str],
    dropped: list[int],
) -> None:
    registry: WaiterRegistry[int] = WaiterRegistry()
    for token, items in enumerate(registrations):
        registry.register(token, items)
    live = {t: items for t, items in enumerate(registrations) if t not in dropped}
    for token in dropped:
        registry.unregister(token)
    changes = Changes(tables=tables, keys=keys)
    woken = registry.woken_by(changes)
    assert woken == {t for t, items in live.items() if _concerns(items, changes)}
    assert len(registry) == len(live) - len(woken)
    # Woken once: the same change again wakes nobody already woken.
    assert registry.woken_by(changes) == set()
    assert registry.woken_by(Changes(everything=True)) == set(live) - woken
    assert len(registry) == 0


# ------------------------------------------------------------------ Go text rules


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("15s", 15 * SECOND_NS),
        ("1h30m", 5400 * SECOND_NS),
        ("-1.5ms", -1_500_000),
        ("1.000000001s", 1_000_000_001),
        ("2h45m3.5s", (2 * 3600 + 45 * 60 + 3) * SECOND_NS + SECOND_NS // 2),
        ("100\u00b5s", 100_000),
        ("7us", 7_000),
        ("+5ns", 5),
        (".5s", SECOND_NS // 2),
    ],
)
def test_parse_duration(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "time: invalid duration "),
        ("abc", "time: invalid duration abc"),
        ("10", "time: missing unit in duration 10"),
        ("10x", "time: unknown unit x in duration 10x"),
        ("1.s.", "time: invalid duration 1.s."),
        ("99999999999h", "time: invalid duration 99999999999h"),
        ("-", "time: invalid duration -"),
    ],
)
def test_parse_duration_errors_are_gos(text: str, error: str) -> None:
    with pytest.raises(GoDurationError) as caught:
        parse_duration(text)
    assert str(caught.value) == error


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (1, "1ns"),
        (1_500, "1.5\u00b5s"),
        (1_500_000, "1.5ms"),
        (10 * SECOND_NS, "10s"),
        (24 * 3600 * SECOND_NS, "24h0m0s"),
        (90 * SECOND_NS + 1, "1m30.000000001s"),
        (-(3600 + 1) * SECOND_NS, "-1h0m1s"),
    ],
)
def test_format_duration(ns: int, text: str) -> None:
    assert format_duration(ns) == text


@given(st.integers(-(1 << 63) + 1, (1 << 63) - 1))
def test_format_then_parse_is_exact(ns: int) -> None:
    assert parse_duration(format_duration(ns)) == ns


def test_go_quote() -> None:
    assert go_quote("plain") == '"plain"'
    assert go_quote('a"b\\c\n\t') == '"a\\"b\\\\c\\n\\t"'
    assert go_quote("\x00\x7f") == '"\\x00\\x7f"'
    assert go_quote("caf\u00e9") == '"caf\u00e9"'
    assert go_quote(b"\xff".decode("utf-8", "surrogateescape")) == '"\\xff"'


# ------------------------------------------------------------------ structs


def test_every_to_wire_writes_gos_sorted_keys() -> None:
    node = Node("n", "a", {"z": "1", "a": "2"}, 1, 2)
    service = NodeService("web", "web", ("x",), "", 80, False, 1, 2)
    check = HealthCheck("n", "c", "name", "passing", "", "", "web", "web", 1, 2)
    records = [
        node.to_wire(),
        service.to_wire(),
        service.to_service_node_wire(node),
        check.to_wire(),
        DirEntry("k", b"v", 1, "s", 2, 3, 4).to_wire(),
        Session("id", "n", "node", ("c",), 5, "release", "10s", 1, 1).to_wire(),
        RegisterRequest("dc", "n", "a", {"b": "c"}, service, check, [check], "t").to_wire(),
        RegisterRequest(node="n", create_index=1, modify_index=2).to_wire(),
        DeregisterRequest("dc", "n", "s", "c", "t").to_wire(),
        KVSRequest("set", DirEntry("k"), "dc", "t").to_wire(),
        SessionRequest("create", Session("id"), "dc", "t").to_wire(),
        TombstoneRequest("reap", 5, "dc", "t").to_wire(),
    ]
    options = QueryOptions("t", 5, 10, True, False)
    source = QuerySource("dc", "n")
    reads = [
        DCSpecificRequest("dc", source, options),
        NodeSpecificRequest("dc", "n", options),
        ServiceSpecificRequest("dc", "web", "v1", True, source, options),
        ChecksInStateRequest("dc", "any", source, options),
        KeyRequest("dc", "k", options),
        KeyListRequest("dc", "p/", "/", options),
        SessionSpecificRequest("dc", "id", options),
    ]
    for read in reads:
        wire = read.to_wire()
        records.append(wire)
        assert type(read).from_wire(wire) == read  # decode(encode(x)) == x
    for record in records:
        assert_go_key_order(record)
    assert list(records[0]) == [
        "Address",
        "CreateIndex",
        "ID",
        "Meta",
        "ModifyIndex",
        "Node",
        "TaggedAddresses",
    ]


def test_decoding_is_tolerant_the_way_go_msgpack_is() -> None:
    # Bin or raw strings, unknown keys, nil fields, []byte as a raw str (old-spec encoders).
    wire = {
        b"Key": b"k",
        "Value": "\x00\udcff",
        "Flags": None,
        "Unknown": [1, 2, 3],
        "Session": b"s",
    }
    entry = DirEntry.from_wire(
        {k.decode() if isinstance(k, bytes) else k: v for k, v in wire.items()}
    )
    assert entry == DirEntry("k", b"\x00\xff", 0, "s")
    assert DirEntry.from_wire(None) == DirEntry("")
    packed = msgpack.packb(
        {"Op": "set", "DirEnt": {"Key": "k", "Value": b"\x01"}}, use_bin_type=True
    )
    request = KVSRequest.from_wire(msgpack.unpackb(packed, raw=False))
    assert request.dir_ent.value == b"\x01" and request.op == "set"
    read = KeyRequest.from_wire(
        {"Datacenter": "dc1", "MinQueryIndex": 5, "MaxQueryTime": -1, "Key": "x", "Extra": 1}
    )
    assert (read.options.min_query_index, read.options.max_query_time, read.key) == (5, -1, "x")
    service = ServiceSpecificRequest.from_wire({"ServiceName": b"web", "ServiceTag": "v1"})
    assert service.tag is None  # TagFilter off: no filtering
    assert ServiceSpecificRequest.from_wire({"ServiceTag": "v1", "TagFilter": True}).tag == "v1"


@pytest.mark.parametrize(
    ("build", "body", "field"),
    [
        (DirEntry.from_wire, {"Key": 5}, "DirEntry.Key"),
        (DirEntry.from_wire, {"Flags": -1}, "DirEntry.Flags"),
        (DirEntry.from_wire, {"Flags": True}, "DirEntry.Flags"),
        (DirEntry.from_wire, [1, 2], "DirEntry"),
        (Session.from_wire, {"Checks": "serfHealth"}, "Session.Checks"),
        (RegisterRequest.from_wire, {"TaggedAddresses": ["x"]}, "RegisterRequest.TaggedAddresses"),
        (RegisterRequest.from_wire, {"Checks": 1}, "RegisterRequest.Checks"),
        (NodeService.from_wire, {"EnableTagOverride": 1}, "NodeService.EnableTagOverride"),
    ],
)
def test_wrong_types_are_refused_naming_the_field(build, body, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(WireDecodeError, match=field.replace(".", r"\.")):
        build(body)


# ------------------------------------------------------------------ endpoint rules


def test_prepare_register_defaults_and_errors() -> None:
    with pytest.raises(RuleError, match=r"^Must provide node and address$"):
        prepare_register(RegisterRequest(node="n"))
    with pytest.raises(RuleError, match=r"^Must provide service name with ID$"):
        prepare_register(RegisterRequest(node="n", address="a", service=NodeService("id", "")))
    prepared = prepare_register(
        RegisterRequest(
            node="n",
            address="a",
            service=NodeService("", "web"),
            check=HealthCheck("", "", name="alive"),
            checks=[HealthCheck("other", "c2")],
        )
    )
    assert prepared.service is not None and prepared.service.id == "web"
    assert prepared.check is None
    assert prepared.checks is not None
    assert [(c.node, c.check_id) for c in prepared.checks] == [("other", "c2"), ("n", "alive")]


def test_prepare_session_texts() -> None:
    with pytest.raises(RuleError, match=r"^Must provide ID$"):
        prepare_session("destroy", Session(""), ttl_min_ns=SESSION_TTL_MIN_NS)
    with pytest.raises(RuleError, match=r"^Must provide Node$"):
        prepare_session("create", Session(""), ttl_min_ns=SESSION_TTL_MIN_NS)
    with pytest.raises(RuleError, match=r"^Invalid Behavior setting 'nuke'$"):
        prepare_session("create", Session("", node="n", behavior="nuke"), ttl_min_ns=1)
    with pytest.raises(RuleError) as bad:
        prepare_session("create", Session("", node="n", ttl="soon"), ttl_min_ns=1)
    assert str(bad.value) == "Session TTL 'soon' invalid: time: invalid duration soon"
    with pytest.raises(RuleError) as short:
        prepare_session("create", Session("", node="n", ttl="5s"), ttl_min_ns=SESSION_TTL_MIN_NS)
    assert str(short.value) == "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]"
    with pytest.raises(RuleError, match=r"Invalid Session TTL '90000000000000'"):
        prepare_session("create", Session("", node="n", ttl="25h"), ttl_min_ns=SESSION_TTL_MIN_NS)
    ok = prepare_session("create", Session("", node="n", ttl="0s"), ttl_min_ns=SESSION_TTL_MIN_NS)
    assert ok.behavior == "release"
    assert session_ttl_ns("0s") == 0 and session_ttl_ns("15s") == 15 * SECOND_NS
    with pytest.raises(ValueError, match=r"^Invalid Session TTL 'x': time: invalid duration x$"):
        session_ttl_ns("x")


def test_kvs_apply_rules() -> None:
    with pytest.raises(RuleError, match=r"^Must provide key$"):
        check_kvs_apply("set", DirEntry(""), lock_delay_until=0.0, now=1.0)
    assert check_kvs_apply("delete-tree", DirEntry(""), lock_delay_until=0.0, now=1.0)
    assert not check_kvs_apply("lock", DirEntry("k"), lock_delay_until=5.0, now=1.0)
    assert check_kvs_apply("lock", DirEntry("k"), lock_delay_until=5.0, now=5.0)
    assert check_kvs_apply("set", DirEntry("k"), lock_delay_until=5.0, now=1.0)


def test_route_orders_datacenter_then_stale_then_leader() -> None:
    def r(dc: str, read: bool, stale: bool, leader: bool) -> Route:
        return route(dc, "dc1", is_read=read, allow_stale=stale, is_leader=leader)

    assert r("dc2", True, True, True) is Route.DATACENTER
    assert r("dc1", True, True, False) is Route.LOCAL
    assert r("", True, False, False) is Route.LEADER
    assert r("dc1", False, True, False) is Route.LEADER
    assert r("dc1", False, False, True) is Route.LOCAL


def test_blocking_wait_clamps_and_jitter() -> None:
    assert blocking_wait_ns(0, 0.0) == 300 * SECOND_NS
    assert blocking_wait_ns(-5, 0.0) == 300 * SECOND_NS
    assert blocking_wait_ns(10_000 * SECOND_NS, 0.0) == 600 * SECOND_NS
    assert blocking_wait_ns(16 * SECOND_NS, 0.5) == 16 * SECOND_NS + SECOND_NS // 2
    assert blocking_wait_ns(600 * SECOND_NS, 0.999999) < 600 * SECOND_NS * 17 // 16
    assert blocking_wait_ns(10, 0.9) == 10  # under 16 ns there is no jitter to draw


def test_session_ids_are_go_uuid_shaped() -> None:
    assert format_session_id(bytes(range(16))) == "00010203-0405-0607-0809-0a0b0c0d0e0f"
    with pytest.raises(ValueError):
        format_session_id(b"short")


def test_aggregated_status() -> None:
    def checks(*pairs: tuple[str, str]) -> list[HealthCheck]:
        return [HealthCheck("n", cid, status=status) for cid, status in pairs]

    assert aggregated_status([]) == "passing"
    assert aggregated_status(checks(("a", "passing"), ("b", "warning"))) == "warning"
    assert aggregated_status(checks(("a", "critical"), ("b", "warning"))) == "critical"
    assert aggregated_status(checks(("_node_maintenance", "critical"), ("b", "passing"))) == (
        "maintenance"
    )
    assert aggregated_status(checks(("_service_maintenance:web", "x"))) == "maintenance"
    assert aggregated_status(checks(("a", "passing"), ("b", "unknown"))) == ""
