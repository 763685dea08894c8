"""The state store against Consul 0.7's semantics: registration and its cascades, the KV
operations (CAS, lock/unlock races, delete-tree, tombstones and the index rules), sessions
(validation, invalidation releasing or deleting locks, lock-delay), and the changes each write
records for the watches."""

from __future__ import annotations

import pytest
from catalog_helpers import Driver
from hypothesis import given, settings, strategies as st

from agentrpc.catalog.constants import MAX_LOCK_DELAY_NS, SECOND_NS
from agentrpc.catalog.state_store import NodeCoordinate, StateError, fold_name
from agentrpc.catalog.structs import DirEntry, HealthCheck, NodeService, RegisterRequest, Session
from agentrpc.catalog.watch import WatchSet, key_item, prefix_item, table_item
from agentrpc.gossip.coordinate import Coordinate

# ------------------------------------------------------------------ registration


def test_registration_stamps_indexes_and_skips_unchanged_nodes_and_services() -> None:
    d = Driver()
    first = d.node("n1", "10.0.0.1")
    assert d.store.get_node("n1")[1].create_index == first  # type: ignore[union-attr]
    d.store.take_changes()
    # The same node again: nothing changes (0.7.3+ diffs before it writes).
    d.node("n1", "10.0.0.1")
    assert d.store.table_index("nodes") == first
    assert not d.store.take_changes().tables
    moved = d.node("n1", "10.0.0.2")
    node = d.store.get_node("n1")[1]
    assert node is not None and (node.create_index, node.modify_index) == (first, moved)
    svc = d.service("n1", "web", tags=("a",), port=80)
    same = d.service("n1", "web", tags=("a",), port=80)
    assert d.store.table_index("services") == svc != same
    _, found = d.store.node_services("n1")
    assert found is not None and found[1]["web"].modify_index == svc


def test_checks_are_always_written_default_critical_and_copy_service_name() -> None:
    d = Driver()
    d.node("n1")
    d.service("n1", "web-1", "web")
    first = d.check("n1", "c1", status="", service_id="web-1")
    again = d.check("n1", "c1", status="", service_id="web-1")
    _, checks = d.store.node_checks("n1")
    assert len(checks) == 1
    check = checks[0]
    assert (check.status, check.service_name) == ("critical", "web")
    assert (check.create_index, check.modify_index) == (first, again)
    assert d.store.table_index("checks") == again


def test_a_check_of_a_missing_service_fails_the_whole_registration() -> None:
    d = Driver()
    request = RegisterRequest(
        node="n1",
        address="10.0.0.1",
        service=NodeService("web", "web"),
        checks=[HealthCheck("n1", "c1", service_id="db")],
    )
    with pytest.raises(StateError, match=r"^failed inserting check: Missing service registration$"):
        d.store.ensure_registration(d.next(), request, d.now)
    assert d.store.get_node("n1")[1] is None
    assert d.store.indexes() == dict.fromkeys(d.store.indexes(), 0)
    # A check of another node that does not exist fails too.
    request = RegisterRequest(node="n1", address="a", checks=[HealthCheck("ghost", "c1")])
    with pytest.raises(StateError, match=r"Missing node registration"):
        d.store.ensure_registration(d.next(), request, d.now)
    # A check of the service registered in the same request is fine.
    ok = RegisterRequest(
        node="n1",
        address="a",
        service=NodeService("web", "web"),
        checks=[HealthCheck("n1", "c1", service_id="web", status="passing")],
    )
    d.store.ensure_registration(d.next(), ok, d.now)
    assert [c.check_id for c in d.store.node_checks("n1")[1]] == ["c1"]


def test_deleting_a_service_takes_its_checks_and_a_node_everything() -> None:
    d = Driver()
    d.node("n1")
    d.service("n1", "web")
    d.service("n1", "db")
    d.check("n1", "web-check", service_id="web")
    d.check("n1", "node-check")
    d.session("s1", "n1")
    d.set("lock", session="")
    d.store.kvs_lock(d.next(), DirEntry("lock", b"x", session="s1"))
    idx = d.next()
    d.store.delete_service(idx, "n1", "web", d.now)
    assert [c.check_id for c in d.store.node_checks("n1")[1]] == ["node-check"]
    assert d.store.table_index("services") == d.store.table_index("checks") == idx
    idx = d.next()
    d.store.delete_node(idx, "n1", d.now)
    assert d.store.nodes()[1] == []
    assert d.store.node_checks("n1")[1] == []
    assert d.store.node_sessions("n1")[1] == []
    entry = d.store.kvs_get("lock")[1]
    assert entry is not None and entry.session == "" and entry.modify_index == idx
    assert d.store.table_index("nodes", "services", "checks", "sessions") == idx
    d.store.check_invariants()
    # Deleting what is not there changes nothing.
    before = d.store.indexes()
    d.store.delete_node(d.next(), "n1", d.now)
    d.store.delete_service(d.next(), "n1", "db", d.now)
    d.store.delete_check(d.next(), "n1", "nope", d.now)
    assert d.store.indexes() == before


def test_catalog_reads_order_and_index_rules() -> None:
    d = Driver()
    d.node("b")
    d.node("a", tagged_addresses={"wan": "1.2.3.4"})
    d.service("b", "web-2", "web", tags=("Blue",))
    d.service("a", "web-1", "web", tags=("green",))
    d.check("a", "c", status="warning")
    idx = d.check("b", "c", status="passing")
    assert [n.node for n in d.store.nodes()[1]] == ["a", "b"]
    assert d.store.services()[1] == {"web": ["Blue", "green"]}
    _, instances = d.store.service_nodes("web")
    assert [(n.node, s.id) for n, s in instances] == [("a", "web-1"), ("b", "web-2")]
    _, tagged = d.store.service_nodes("web", "blue")
    assert [s.id for _, s in tagged] == ["web-2"]
    assert [c.node for c in d.store.checks_in_state("passing")[1]] == ["b"]
    assert [c.status for c in d.store.checks_in_state("any")[1]] == ["passing", "warning"]
    index, csn = d.store.check_service_nodes("web")
    assert index == idx and [len(x.checks) for x in csn] == [1, 1]
    assert d.store.node_services("ghost") == (0, None)
    _, dump = d.store.node_dump()
    assert [info.node.node for info in dump] == ["a", "b"]


# ------------------------------------------------------------------ KV


def test_set_keeps_create_index_and_session_but_takes_lock_index_from_the_request() -> None:
    d = Driver()
    d.node("n1")
    d.session("s1", "n1")
    created = d.set("k")
    locked = d.next()
    assert d.store.kvs_lock(locked, DirEntry("k", b"l", session="s1"))
    written = d.set("k", b"plain", flags=7, session="someone-else")
    entry = d.store.kvs_get("k")[1]
    assert entry is not None
    assert (entry.create_index, entry.modify_index) == (created, written)
    assert (entry.session, entry.value, entry.flags, entry.lock_index) == ("s1", b"plain", 7, 0)


def test_cas_create_only_with_zero_and_match_otherwise() -> None:
    d = Driver()
    assert d.store.kvs_set_cas(d.next(), DirEntry("k", b"1", modify_index=0))
    assert not d.store.kvs_set_cas(d.next(), DirEntry("k", b"2", modify_index=0))
    current = d.store.kvs_get("k")[1]
    assert current is not None
    assert not d.store.kvs_set_cas(
        d.next(), DirEntry("k", b"3", modify_index=current.modify_index + 1)
    )
    assert d.store.kvs_set_cas(d.next(), DirEntry("k", b"4", modify_index=current.modify_index))
    assert not d.store.kvs_set_cas(d.next(), DirEntry("missing", b"x", modify_index=5))
    assert d.store.kvs_get("k")[1].value == b"4"  # type: ignore[union-attr]


def test_delete_cas_is_true_for_a_missing_key_and_needs_the_index_otherwise() -> None:
    d = Driver()
    assert d.store.kvs_delete_cas(d.next(), 12345, "missing")
    at = d.set("k")
    assert not d.store.kvs_delete_cas(d.next(), at + 1, "k")
    assert d.store.kvs_get("k")[1] is not None
    gone = d.next()
    assert d.store.kvs_delete_cas(gone, at, "k")
    assert d.store.kvs_get("k")[1] is None
    assert dict(d.store.iter_tombstones()) == {"k": gone}


def test_lock_unlock_race_between_two_sessions() -> None:
    d = Driver()
    d.node("n1")
    d.session("a", "n1")
    d.session("b", "n1")
    assert d.store.kvs_lock(d.next(), DirEntry("leader", b"a", session="a"))
    # b loses the race while a holds it, and cannot unlock it either.
    assert not d.store.kvs_lock(d.next(), DirEntry("leader", b"b", session="b"))
    assert not d.store.kvs_unlock(d.next(), DirEntry("leader", b"b", session="b"))
    held = d.store.kvs_get("leader")[1]
    assert held is not None and (held.session, held.value, held.lock_index) == ("a", b"a", 1)
    # a re-locks: value updated, LockIndex unchanged.
    assert d.store.kvs_lock(d.next(), DirEntry("leader", b"a2", session="a"))
    assert d.store.kvs_get("leader")[1].lock_index == 1  # type: ignore[union-attr]
    assert d.store.kvs_unlock(d.next(), DirEntry("leader", b"free", session="a"))
    free = d.store.kvs_get("leader")[1]
    assert free is not None and (free.session, free.value, free.lock_index) == ("", b"free", 1)
    assert d.store.kvs_lock(d.next(), DirEntry("leader", b"b", session="b"))
    taken = d.store.kvs_get("leader")[1]
    assert taken is not None and (taken.session, taken.lock_index) == ("b", 2)
    assert not d.store.kvs_unlock(d.next(), DirEntry("missing", session="b"))
    d.store.check_invariants()


def test_lock_errors_name_the_session_as_go_quotes_it() -> None:
    d = Driver()
    with pytest.raises(StateError, match=r'^invalid session "nope"$'):
        d.store.kvs_lock(d.next(), DirEntry("k", session="nope"))
    with pytest.raises(StateError, match=r"^missing session$"):
        d.store.kvs_lock(d.next(), DirEntry("k"))
    with pytest.raises(StateError, match=r"^missing session$"):
        d.store.kvs_unlock(d.next(), DirEntry("k"))
    with pytest.raises(StateError, match=r'^invalid session "a\\nb"$'):
        d.store.kvs_lock(d.next(), DirEntry("k", session="a\nb"))


def test_delete_tree_tombstones_every_key_and_list_index_covers_deleted_keys() -> None:
    d = Driver()
    d.set("app/a")
    d.set("app/b/c")
    d.set("apple")
    other = d.set("zzz")
    gone = d.next()
    d.store.kvs_delete_tree(gone, "app/")
    assert [e.key for e in d.store.kvs_list("")[1]] == ["apple", "zzz"]
    assert dict(d.store.iter_tombstones()) == {"app/a": gone, "app/b/c": gone}
    # The prefix is empty now, yet its index is the deletion's, not the table's or 0.
    index, entries = d.store.kvs_list("app/")
    assert entries == [] and index == gone
    d.set("unrelated")
    assert d.store.kvs_list("app/")[0] == gone
    assert d.store.kvs_list("zzz")[0] == other
    # A tree delete that matches nothing is a no-op.
    before = d.store.indexes()
    d.store.kvs_delete_tree(d.next(), "nothing/")
    assert d.store.indexes() == before
    # Reaping drops the tombstones; an empty prefix then falls back to the tables' index.
    d.store.reap_tombstones(gone)
    assert list(d.store.iter_tombstones()) == []
    assert d.store.kvs_list("app/")[0] == d.store.table_index("kvs", "tombstones")


def test_get_index_is_the_entry_modify_index_or_the_tables() -> None:
    d = Driver()
    d.set("a")
    latest = d.set("b")
    assert d.store.kvs_get("missing") == (latest, None)
    gone = d.next()
    d.store.kvs_delete(gone, "a")
    assert d.store.kvs_get("a") == (gone, None)


def test_list_keys_rolls_up_to_the_separator_and_keeps_it() -> None:
    d = Driver()
    for key in ("web/a", "web/b/c", "web/b/d", "web/e/", "webby", "db"):
        d.set(key)
    _, keys = d.store.kvs_list_keys("web/", "/")
    assert keys == ["web/a", "web/b/", "web/e/"]
    _, everything = d.store.kvs_list_keys("", "")
    assert everything == ["db", "web/a", "web/b/c", "web/b/d", "web/e/", "webby"]
    _, top = d.store.kvs_list_keys("", "/")
    assert top == ["db", "web/", "webby"]


# ------------------------------------------------------------------ sessions


def test_session_create_validation_texts() -> None:
    d = Driver()
    with pytest.raises(StateError, match=r"^Missing session ID$"):
        d.store.session_create(d.next(), Session("", node="n1"))
    with pytest.raises(StateError, match=r"^Missing node registration$"):
        d.store.session_create(d.next(), Session("s", node="n1"))
    d.node("n1")
    with pytest.raises(StateError, match=r"^Invalid session behavior: nuke$"):
        d.store.session_create(d.next(), Session("s", node="n1", behavior="nuke"))
    with pytest.raises(StateError, match=r"^Missing check 'serfHealth' registration$"):
        d.store.session_create(d.next(), Session("s", node="n1", checks=("serfHealth",)))
    d.check("n1", "serfHealth", status="critical")
    with pytest.raises(StateError, match=r"^Check 'serfHealth' is in critical state$"):
        d.store.session_create(d.next(), Session("s", node="n1", checks=("serfHealth",)))
    d.check("n1", "serfHealth", status="passing")
    idx = d.session("s", "n1", checks=("serfHealth",))
    session = d.store.session_get("s")[1]
    assert session is not None and session.behavior == "release"
    assert (session.create_index, session.modify_index) == (idx, idx)


def test_destroy_releases_locks_and_sets_a_capped_lock_delay() -> None:
    d = Driver()
    d.node("n1")
    d.session("s", "n1", lock_delay=15 * SECOND_NS)
    d.session("long", "n1", lock_delay=10 * MAX_LOCK_DELAY_NS)
    assert d.store.kvs_lock(d.next(), DirEntry("a", b"1", session="s"))
    assert d.store.kvs_lock(d.next(), DirEntry("b", b"2", session="long"))
    d.now = 5000.0
    idx = d.next()
    d.store.session_destroy(idx, "s", d.now)
    d.store.session_destroy(d.next(), "long", d.now)
    released = d.store.kvs_get("a")[1]
    assert released is not None
    assert (released.session, released.value, released.modify_index) == ("", b"1", idx)
    assert released.lock_index == 1
    assert d.store.kvs_lock_delay("a") == 5015.0
    assert d.store.kvs_lock_delay("b") == 5000.0 + MAX_LOCK_DELAY_NS / 1e9
    assert d.store.kvs_lock_delay("never-locked") == 0.0
    d.store.check_invariants()


def test_delete_behavior_deletes_the_held_keys() -> None:
    d = Driver()
    d.node("n1")
    d.session("s", "n1", behavior="delete")
    assert d.store.kvs_lock(d.next(), DirEntry("a", b"1", session="s"))
    d.set("b")
    idx = d.next()
    d.store.session_destroy(idx, "s", d.now)
    assert d.store.kvs_get("a")[1] is None
    assert dict(d.store.iter_tombstones()) == {"a": idx}
    assert d.store.kvs_lock_delay("a") == 0.0  # LockDelay 0: none
    assert d.store.kvs_get("b")[1] is not None


def test_a_check_turning_critical_invalidates_its_sessions_and_releases_locks() -> None:
    d = Driver()
    d.node("n1")
    d.check("n1", "serfHealth")
    d.session("s", "n1", checks=("serfHealth",))
    d.session("other", "n1")
    assert d.store.kvs_lock(d.next(), DirEntry("k", session="s"))
    idx = d.check("n1", "serfHealth", status="critical")
    assert d.store.session_get("s")[1] is None
    assert d.store.session_get("other")[1] is not None
    assert d.store.kvs_get("k")[1].session == ""  # type: ignore[union-attr]
    assert d.store.table_index("sessions") == idx
    d.store.check_invariants()


def test_removing_a_check_invalidates_its_sessions() -> None:
    d = Driver()
    d.node("n1")
    d.check("n1", "c")
    d.session("s", "n1", checks=("c",))
    d.store.delete_check(d.next(), "n1", "c", d.now)
    assert d.store.session_list()[1] == []


# ------------------------------------------------------------------ watches


def test_reads_record_their_watch_items_and_writes_their_changes() -> None:
    d = Driver()
    ws = WatchSet()
    d.store.nodes(ws)
    d.store.check_service_nodes("web", ws=ws)
    d.store.kvs_get("k", ws)
    d.store.kvs_list("p/", ws)
    d.store.session_list(ws)
    assert ws == {
        table_item("nodes"),
        table_item("services"),
        table_item("checks"),
        table_item("sessions"),
        key_item("k"),
        prefix_item("p/"),
    }
    d.store.take_changes()
    d.node("n1")
    d.set("p/x")
    d.store.kvs_delete_tree(d.next(), "p/")
    changes = d.store.take_changes()
    assert changes.tables == {"nodes", "kvs", "tombstones"}
    assert changes.keys == {"p/x"}
    assert changes.tombstone_index == d.index
    assert not d.store.take_changes()


# ------------------------------------------------------------------ names in any case


def _case_permutation(data: st.DataObject, name: str) -> str:
    flips = data.draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.swapcase() if flip else c for c, flip in zip(name, flips, strict=True))


_names = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.É",
    min_size=1,
    max_size=12,
)


@settings(deadline=None, max_examples=60)
@given(st.data(), _names, _names, _names)
def test_any_case_of_a_registered_name_finds_it(
    data: st.DataObject, node: str, service: str, check: str
) -> None:
    d = Driver()
    d.node(node, "10.0.0.1")
    d.service(node, service + "-1", service, tags=("Primary",), port=80)
    d.check(node, check, service_id=service + "-1")
    node_any = _case_permutation(data, node)
    service_any = _case_permutation(data, service)
    _, found = d.store.get_node(node_any)
    assert found is not None and found.node == node  # the stored case comes back
    _, services = d.store.node_services(node_any)
    assert services is not None and list(services[1]) == [service + "-1"]
    _, instances = d.store.service_nodes(service_any)
    assert [(n.node, s.service) for n, s in instances] == [(node, service)]
    _, instances = d.store.service_nodes(service_any, "pRIMARY")
    assert len(instances) == 1
    _, healthy = d.store.check_service_nodes(service_any)
    assert [c.check_id for c in healthy[0].checks] == [check]
    assert [c.check_id for c in d.store.node_checks(node_any)[1]] == [check]
    assert [c.check_id for c in d.store.service_checks(service_any)[1]] == [check]
    assert len(d.store.node_info(node_any)[1]) == 1
    d.store.check_invariants()
    # Deleting by any case removes the rows.
    d.store.delete_service(d.next(), node_any, _case_permutation(data, service + "-1"), d.now)
    assert d.store.service_nodes(service)[1] == []
    assert d.store.node_checks(node)[1] == []
    d.store.delete_node(d.next(), _case_permutation(data, node), d.now)
    assert d.store.get_node(node)[1] is None
    d.store.check_invariants()


def test_registering_a_node_in_another_case_updates_that_node() -> None:
    d = Driver()
    first = d.node("foo", "10.0.0.1")
    d.service("foo", "web", port=80)
    d.check("foo", "serfHealth")
    renamed = d.node("FOO", "10.0.0.1")  # same address: the name alone changes the node
    _, nodes = d.store.nodes()
    assert [(n.node, n.create_index, n.modify_index) for n in nodes] == [("FOO", first, renamed)]
    # Its services and checks stay with it.
    _, found = d.store.node_services("Foo")
    assert found is not None and found[0].node == "FOO" and list(found[1]) == ["web"]
    assert [c.check_id for c in d.store.node_checks("foo")[1]] == ["serfHealth"]
    # A service ID or a check ID in another case is the same row, rewritten as sent.
    d.service("foo", "WEB", "web", port=81)
    _, found = d.store.node_services("foo")
    assert found is not None and [(s.id, s.port) for s in found[1].values()] == [("WEB", 81)]
    d.check("FOO", "SERFHEALTH", status="critical")
    assert [(c.check_id, c.status) for c in d.store.node_checks("foo")[1]] == [
        ("SERFHEALTH", "critical")
    ]
    d.store.check_invariants()


def test_checks_and_sessions_name_nodes_and_services_in_any_case() -> None:
    d = Driver()
    d.node("node1")
    # A check naming its node and service in another case is accepted (no Missing ... error).
    request = RegisterRequest(
        node="node1",
        address="10.0.0.1",
        service=NodeService("Api-1", "Api"),
        checks=[HealthCheck("NODE1", "c1", service_id="api-1", status="passing")],
    )
    d.store.ensure_registration(d.next(), request, d.now)
    [check] = d.store.node_checks("node1")[1]
    assert check.service_name == "Api"
    # A session on the node in any case, with the check in any case; the check turning
    # critical (named in a third case) invalidates it.
    d.session("s1", "Node1", checks=["C1"])
    assert [s.id for s in d.store.node_sessions("nOdE1")[1]] == ["s1"]
    d.check("node1", "c1", status="critical")
    assert d.store.session_get("s1")[1] is None
    d.store.check_invariants()


def test_names_stay_apart_from_keys_and_service_listing_keeps_each_spelling() -> None:
    d = Driver()
    d.node("n1")
    d.node("n2")
    d.service("n1", "web-a", "Web", tags=("a",))
    d.service("n2", "web-b", "web", tags=("b",))
    # Both spellings are one service to the lookups...
    _, instances = d.store.service_nodes("WEB")
    assert sorted(s.id for _, s in instances) == ["web-a", "web-b"]
    # ...and two names in the listing, as the reference's map keyed by ServiceName.
    assert d.store.services()[1] == {"Web": ["a"], "web": ["b"]}
    # KV keys stay case-sensitive.
    d.set("Key")
    assert d.store.kvs_get("key")[1] is None and d.store.kvs_get("Key")[1] is not None
    # Nodes are listed in the order of their lower-cased names, as memdb's index.
    d.node("B")
    d.node("a")
    assert [n.node for n in d.store.nodes()[1]] == ["a", "B", "n1", "n2"]


def test_coordinates_follow_the_node_in_any_case() -> None:
    d = Driver()
    d.node("Node1")
    coord = Coordinate((0.1, 0.2), 0.5, 0.0, 0.0001)
    d.store.coordinate_batch_update(d.next(), [NodeCoordinate("node1", coord)])
    assert d.store.coordinate_get("NODE1") == coord
    d.store.delete_node(d.next(), "node1", d.now)
    assert d.store.coordinates()[1] == []
    d.store.check_invariants()


def test_fold_name_is_gos_simple_lower_case() -> None:
    assert fold_name("Web-1.Example") == "web-1.example"
    assert fold_name("ÉCOLE") == "école"
    assert fold_name("\u0130stanbul") == "istanbul"  # Go: U+0130 to a plain i
    assert fold_name("ΟΔΟΣ") == "οδοσ"  # no final-sigma rule
