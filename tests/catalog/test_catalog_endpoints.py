"""Every endpoint over the in-process call path (memory streams through the server port's
router, as the HTTP API and DNS will call them): the reference's replies, error texts and
routing; lock-delay enforced before Raft; sessions created, renewed and expired by the leader;
the leader's reconciliation of serf members into the catalog."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
import trio
import trio.testing
from catalog_helpers import DC, assert_go_key_order, in_process, running_duties

from agentrpc.catalog.consensus import ApplyError
from agentrpc.protocol.bodies import Member
from agentrpc.serverport.endpoints import RemoteError

SECOND = 1_000_000_000


async def remote_error(env: Any, method: str, args: Any) -> str:
    with pytest.raises(RemoteError) as caught:
        await env.call(method, args)
    return caught.value.error


def kv(op: str, key: str, value: bytes | None = b"v", **dirent: Any) -> dict[str, Any]:
    return {"Datacenter": DC, "Op": op, "DirEnt": {"Key": key, "Value": value, **dirent}}


async def register_web(env: Any, node: str = "web1", address: str = "10.0.0.1") -> None:
    await env.call(
        "Catalog.Register",
        {
            "Datacenter": DC,
            "Node": node,
            "Address": address,
            "TaggedAddresses": {"wan": "203.0.113.1"},
            "Service": {"Service": "web", "Tags": ["v1"], "Port": 80},
            "Check": {"Name": "web alive", "Status": "passing", "ServiceID": "web"},
            "Checks": [{"CheckID": "serfHealth", "Status": "passing"}],
        },
    )


async def test_status_endpoints() -> None:
    env = in_process()
    assert await env.call("Status.Ping", {}) == {}
    assert await env.call("Status.Leader", {}) == "127.0.0.1:8300"
    assert await env.call("Status.Peers", {}) == ["127.0.0.1:8300"]
    assert await env.call("Catalog.ListDatacenters", {}) == [DC]


async def test_catalog_register_list_and_deregister() -> None:
    env = in_process()
    await register_web(env)
    await register_web(env, "web2", "10.0.0.2")
    nodes = await env.call("Catalog.ListNodes", {"Datacenter": DC})
    assert [n["Node"] for n in nodes["Nodes"]] == ["web1", "web2"]
    assert nodes["KnownLeader"] is True and nodes["LastContact"] == 0
    assert_go_key_order(nodes)
    services = await env.call("Catalog.ListServices", {"Datacenter": DC})
    assert services["Services"] == {"web": ["v1"]}
    instances = await env.call("Catalog.ServiceNodes", {"Datacenter": DC, "ServiceName": "web"})
    first = instances["ServiceNodes"][0]
    assert (first["Node"], first["Address"], first["ServiceID"], first["ServicePort"]) == (
        "web1",
        "10.0.0.1",
        "web",
        80,
    )
    assert first["TaggedAddresses"] == {"wan": "203.0.113.1"}
    assert_go_key_order(instances)
    tagged = await env.call(
        "Catalog.ServiceNodes",
        {"Datacenter": DC, "ServiceName": "web", "ServiceTag": "V1", "TagFilter": True},
    )
    assert len(tagged["ServiceNodes"]) == 2
    none = await env.call(
        "Catalog.ServiceNodes",
        {"Datacenter": DC, "ServiceName": "web", "ServiceTag": "v2", "TagFilter": True},
    )
    assert none["ServiceNodes"] is None
    node_services = await env.call("Catalog.NodeServices", {"Datacenter": DC, "Node": "web1"})
    assert list(node_services["NodeServices"]["Services"]) == ["web"]
    await env.call("Catalog.Deregister", {"Datacenter": DC, "Node": "web1", "ServiceID": "web"})
    checks = await env.call("Health.NodeChecks", {"Datacenter": DC, "Node": "web1"})
    assert [c["CheckID"] for c in checks["HealthChecks"]] == ["serfHealth"]
    await env.call(
        "Catalog.Deregister", {"Datacenter": DC, "Node": "web1", "CheckID": "serfHealth"}
    )
    assert (await env.call("Health.NodeChecks", {"Datacenter": DC, "Node": "web1"}))[
        "HealthChecks"
    ] is None
    await env.call("Catalog.Deregister", {"Datacenter": DC, "Node": "web2"})
    nodes = await env.call("Catalog.ListNodes", {"Datacenter": DC})
    assert [n["Node"] for n in nodes["Nodes"]] == ["web1"]


async def test_catalog_error_texts() -> None:
    env = in_process()
    assert await remote_error(env, "Catalog.Register", {"Node": "n"}) == (
        "Must provide node and address"
    )
    assert await remote_error(
        env, "Catalog.Register", {"Node": "n", "Address": "a", "Service": {"ID": "x"}}
    ) == ("Must provide service name with ID")
    assert await remote_error(
        env,
        "Catalog.Register",
        {"Node": "n", "Address": "a", "Check": {"Name": "c", "ServiceID": "ghost"}},
    ) == ("failed inserting check: Missing service registration")
    assert await remote_error(env, "Catalog.Deregister", {}) == "Must provide node"
    assert await remote_error(env, "Catalog.ServiceNodes", {}) == "Must provide service name"
    assert await remote_error(env, "Catalog.NodeServices", {}) == "Must provide node"
    assert await remote_error(env, "Health.ServiceNodes", {}) == "Must provide service name"
    assert await remote_error(env, "Health.ServiceChecks", {"TagFilter": True}) == (
        "Tag filtering is not supported"
    )
    assert await remote_error(env, "Catalog.ListNodes", {"Datacenter": "dc9"}) == (
        "No path to datacenter"
    )


async def test_health_endpoints() -> None:
    env = in_process()
    await register_web(env)
    await env.call(
        "Catalog.Register",
        {
            "Node": "db1",
            "Address": "10.0.0.3",
            "Checks": [{"CheckID": "disk", "Status": "warning"}],
        },
    )
    nodes = await env.call("Health.ServiceNodes", {"Datacenter": DC, "ServiceName": "web"})
    [entry] = nodes["Nodes"]
    assert entry["Node"]["Node"] == "web1" and entry["Service"]["ID"] == "web"
    assert [c["CheckID"] for c in entry["Checks"]] == ["serfHealth", "web alive"]
    assert_go_key_order(nodes)
    warning = await env.call("Health.ChecksInState", {"Datacenter": DC, "State": "warning"})
    assert [c["CheckID"] for c in warning["HealthChecks"]] == ["disk"]
    every = await env.call("Health.ChecksInState", {"Datacenter": DC, "State": "any"})
    assert len(every["HealthChecks"]) == 3
    service = await env.call("Health.ServiceChecks", {"Datacenter": DC, "ServiceName": "web"})
    assert [c["CheckID"] for c in service["HealthChecks"]] == ["web alive"]


async def test_kvs_apply_get_list_and_keys() -> None:
    env = in_process()
    # The reference's reply is false for set/delete/delete-tree (the HTTP layer says true).
    assert await env.call("KVS.Apply", kv("set", "web/a", b"1", Flags=9)) is False
    assert await env.call("KVS.Apply", kv("set", "web/b/c", b"2")) is False
    got = await env.call("KVS.Get", {"Datacenter": DC, "Key": "web/a"})
    [entry] = got["Entries"]
    assert (entry["Value"], entry["Flags"], got["Index"]) == (b"1", 9, entry["ModifyIndex"])
    assert_go_key_order(got)
    assert await env.call("KVS.Apply", kv("cas", "web/a", b"x", ModifyIndex=1)) is False
    assert await env.call("KVS.Apply", kv("cas", "web/a", b"x", ModifyIndex=entry["ModifyIndex"]))
    assert await env.call("KVS.Apply", kv("delete-cas", "web/a", None, ModifyIndex=1)) is False
    listed = await env.call("KVS.List", {"Datacenter": DC, "Key": "web/"})
    assert [e["Key"] for e in listed["Entries"]] == ["web/a", "web/b/c"]
    keys = await env.call("KVS.ListKeys", {"Datacenter": DC, "Prefix": "web/", "Seperator": "/"})
    assert keys["Keys"] == ["web/a", "web/b/"]
    assert await env.call("KVS.Apply", kv("delete-tree", "web/", None)) is False
    missing = await env.call("KVS.Get", {"Datacenter": DC, "Key": "web/a"})
    assert missing["Entries"] is None and missing["Index"] > listed["Index"]
    empty = in_process()
    first = await empty.call("KVS.Get", {"Datacenter": DC, "Key": "x"})
    assert first["Index"] == 1  # never 0: a client could not block on it
    assert (await empty.call("KVS.List", {"Datacenter": DC, "Key": ""}))["Index"] == 1
    assert await remote_error(env, "KVS.Apply", kv("set", "")) == "Must provide key"
    assert await remote_error(env, "KVS.Apply", kv("nuke", "k")) == "Invalid KVS operation 'nuke'"
    assert await remote_error(env, "KVS.Apply", kv("lock", "k", Session="nope")) == (
        'invalid session "nope"'
    )


async def test_a_body_that_does_not_decode_is_answered_and_the_stream_closed() -> None:
    env = in_process()
    error = await remote_error(env, "KVS.Apply", {"Op": "set", "DirEnt": {"Key": 12}})
    assert error == "msgpack decode error: DirEntry.Key: expected a string, got int"
    error = await remote_error(env, "KVS.Get", {"Key": ["x"]})
    assert error.startswith("msgpack decode error: KeyRequest.Key")
    error = await remote_error(env, "Catalog.ListNodes", "not a map")
    assert error.startswith("msgpack decode error: DCSpecificRequest: expected a map")


async def session_create(env: Any, **session: Any) -> str:
    sid = await env.call("Session.Apply", {"Datacenter": DC, "Op": "create", "Session": session})
    assert isinstance(sid, str) and len(sid) == 36
    return sid


async def test_sessions_lock_release_and_lock_delay(autojump_clock: trio.testing.MockClock) -> None:
    env = in_process()
    await register_web(env)
    holder = await session_create(env, Node="web1", LockDelay=15 * SECOND, Checks=["serfHealth"])
    other = await session_create(env, Node="web1", Behavior="release")
    assert await env.call("KVS.Apply", kv("lock", "leader", b"me", Session=holder))
    assert not await env.call("KVS.Apply", kv("lock", "leader", b"you", Session=other))
    got = await env.call("Session.Get", {"Datacenter": DC, "Session": holder})
    assert got["Sessions"][0]["LockDelay"] == 15 * SECOND
    assert got["Sessions"][0]["Checks"] == ["serfHealth"]
    listed = await env.call("Session.List", {"Datacenter": DC})
    assert sorted(s["ID"] for s in listed["Sessions"]) == sorted([holder, other])
    mine = await env.call("Session.NodeSessions", {"Datacenter": DC, "Node": "web1"})
    assert len(mine["Sessions"]) == 2
    # The node's serfHealth goes critical: the session is invalidated, the lock released.
    await env.call(
        "Catalog.Register",
        {
            "Node": "web1",
            "Address": "10.0.0.1",
            "Checks": [{"CheckID": "serfHealth", "Status": "critical"}],
        },
    )
    assert (await env.call("Session.Get", {"Datacenter": DC, "Session": holder}))[
        "Sessions"
    ] is None
    free = (await env.call("KVS.Get", {"Datacenter": DC, "Key": "leader"}))["Entries"][0]
    assert free["Session"] == "" and free["LockIndex"] == 1
    # Lock-delay: the other session may not take it for 15 s, then it may.
    assert not await env.call("KVS.Apply", kv("lock", "leader", b"you", Session=other))
    await trio.sleep(15.001)
    assert await env.call("KVS.Apply", kv("lock", "leader", b"you", Session=other))
    taken = (await env.call("KVS.Get", {"Datacenter": DC, "Key": "leader"}))["Entries"][0]
    assert (taken["Session"], taken["LockIndex"]) == (other, 2)
    assert await env.call("KVS.Apply", kv("unlock", "leader", b"bye", Session=other))
    await env.call("Session.Apply", {"Datacenter": DC, "Op": "destroy", "Session": {"ID": other}})
    assert (await env.call("Session.List", {"Datacenter": DC}))["Sessions"] is None


async def test_session_apply_error_texts() -> None:
    env = in_process()

    async def apply(op: str, **session: Any) -> str:
        return await remote_error(
            env, "Session.Apply", {"Datacenter": DC, "Op": op, "Session": session}
        )

    assert await apply("destroy") == "Must provide ID"
    assert await apply("create") == "Must provide Node"
    assert await apply("create", Node="n", Behavior="x") == "Invalid Behavior setting 'x'"
    assert await apply("create", Node="n", TTL="1y") == (
        "Session TTL '1y' invalid: time: unknown unit y in duration 1y"
    )
    assert await apply("create", Node="n", TTL="1s") == (
        "Invalid Session TTL '1000000000', must be between [10s=24h0m0s]"
    )
    assert await apply("create", Node="n") == "Missing node registration"
    await env.call("Catalog.Register", {"Node": "n", "Address": "a"})
    assert await apply("create", Node="n", Checks=["serfHealth"]) == (
        "Missing check 'serfHealth' registration"
    )
    assert await apply("renew") == "Invalid Session operation 'renew'"


async def test_session_ttl_expiry_releases_locks(autojump_clock: trio.testing.MockClock) -> None:
    env = in_process(members=lambda: [member("web1", address="10.0.0.1")])
    await register_web(env)
    async with running_duties(env):
        sid = await session_create(env, Node="web1", TTL="10s", Behavior="delete")
        assert await env.call("KVS.Apply", kv("lock", "lease", b"x", Session=sid))
        began = trio.current_time()
        # Renewals keep it alive past its TTL x 2.
        for _ in range(5):
            await trio.sleep(15)
            renewed = await env.call("Session.Renew", {"Datacenter": DC, "Session": sid})
            assert renewed["Sessions"][0]["ID"] == sid
        assert trio.current_time() - began == 75
        assert (await env.call("KVS.Get", {"Datacenter": DC, "Key": "lease"}))["Entries"]
        # Then it expires TTL x 2 after the last renewal: the delete behavior removes the key.
        await trio.sleep(19.9)
        assert (await env.call("Session.Get", {"Datacenter": DC, "Session": sid}))["Sessions"]
        await trio.sleep(0.2)
        assert (await env.call("Session.Get", {"Datacenter": DC, "Session": sid}))[
            "Sessions"
        ] is None
        assert (await env.call("KVS.Get", {"Datacenter": DC, "Key": "lease"}))["Entries"] is None
        gone = await env.call("Session.Renew", {"Datacenter": DC, "Session": sid})
        assert gone["Sessions"] is None and gone["Index"] > 0


async def test_a_new_leader_rearms_every_session_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    env = in_process(members=lambda: [member("web1", address="10.0.0.1")])
    await register_web(env)
    sid = await session_create(env, Node="web1", TTL="30s")
    keep = await session_create(env, Node="web1")  # no TTL: never expires
    await trio.sleep(3600)  # no leader duties running: nothing expires
    async with running_duties(env):
        assert sid in env.catalog.duties.timers and keep not in env.catalog.duties.timers
        await trio.sleep(59.9)
        assert (await env.call("Session.Get", {"Datacenter": DC, "Session": sid}))["Sessions"]
        await trio.sleep(0.2)
        assert (await env.call("Session.Get", {"Datacenter": DC, "Session": sid}))[
            "Sessions"
        ] is None
        assert (await env.call("Session.Get", {"Datacenter": DC, "Session": keep}))["Sessions"]
    assert len(env.catalog.duties.timers) == 0  # revoked on the way out


async def test_tombstones_are_reaped_by_the_leader_after_their_ttl(
    autojump_clock: trio.testing.MockClock,
) -> None:
    env = in_process()
    async with running_duties(env):
        await env.call("KVS.Apply", kv("set", "t/a"))
        await env.call("KVS.Apply", kv("delete", "t/a"))
        assert dict(env.fsm.store.iter_tombstones())
        await trio.sleep(14 * 60)
        assert dict(env.fsm.store.iter_tombstones())
        await trio.sleep(2 * 60)
        assert dict(env.fsm.store.iter_tombstones()) == {}
    assert not env.catalog.hub.tombstone_gc.enabled


def member(name: str, status: str = "alive", address: str = "10.0.0.7", **tags: str) -> Member:
    return Member(
        name=name,
        addr=ipaddress.ip_address(address),
        port=8301,
        tags={"dc": DC, "role": "node", **tags},
        status=status,
    )


async def test_reconcile_puts_serf_members_in_the_catalog(
    autojump_clock: trio.testing.MockClock,
) -> None:
    members = [
        member("server-1", address="10.0.0.1", role="consul", port="8300", vsn="2"),
        member("client-1", address="10.0.0.2"),
        member("other-dc", dc="dc2"),
    ]
    env = in_process(members=lambda: members)
    duties = env.catalog.duties
    async with running_duties(env):
        await trio.testing.wait_all_tasks_blocked()
        assert duties.reconciled == 1
        dump = (await env.call("Internal.NodeDump", {"Datacenter": DC}))["Dump"]
        assert [d["Node"] for d in dump] == ["client-1", "server-1"]
        server = dump[1]
        assert [s["ID"] for s in server["Services"]] == ["consul"]
        assert server["Services"][0]["Port"] == 8300
        assert [(c["CheckID"], c["Status"], c["Output"]) for c in server["Checks"]] == [
            ("serfHealth", "passing", "Agent alive and reachable")
        ]
        index = (await env.call("Catalog.ListNodes", {"Datacenter": DC}))["Index"]
        # A failed member turns critical; a periodic reconcile with nothing new writes nothing.
        members[1] = member("client-1", "failed", address="10.0.0.2")
        duties.member_changed(members[1])
        await trio.testing.wait_all_tasks_blocked()
        info = (await env.call("Internal.NodeInfo", {"Datacenter": DC, "Node": "client-1"}))["Dump"]
        assert info[0]["Checks"][0]["Status"] == "critical"
        applied = env.catalog.applier.applied  # type: ignore[attr-defined]
        await trio.sleep(60.5)
        assert duties.reconciled == 2 and env.catalog.applier.applied == applied  # type: ignore[attr-defined]
        # Left: deregistered. Gone from serf without a leave: reaped at the next full pass.
        duties.member_changed(member("client-1", "left", address="10.0.0.2"))
        await trio.testing.wait_all_tasks_blocked()
        nodes = await env.call("Catalog.ListNodes", {"Datacenter": DC})
        assert [n["Node"] for n in nodes["Nodes"]] == ["server-1"] and nodes["Index"] > index
        await env.call(
            "Catalog.Register",
            {
                "Node": "ghost",
                "Address": "10.9.9.9",
                "Checks": [{"CheckID": "serfHealth", "Status": "passing"}],
            },
        )
        members.pop(1)
        await trio.sleep(61)
        nodes = await env.call("Catalog.ListNodes", {"Datacenter": DC})
        assert [n["Node"] for n in nodes["Nodes"]] == ["server-1"]
        # serf's member-reap event deregisters at once.
        members.append(member("client-2", address="10.0.0.3"))
        duties.member_changed(members[-1])
        await trio.testing.wait_all_tasks_blocked()
        assert len((await env.call("Catalog.ListNodes", {"Datacenter": DC}))["Nodes"]) == 2
        duties.member_changed(members.pop(), reaped=True)
        await trio.testing.wait_all_tasks_blocked()
        nodes = await env.call("Catalog.ListNodes", {"Datacenter": DC})
        assert [n["Node"] for n in nodes["Nodes"]] == ["server-1"]


class FailingApplier:
    def __init__(self) -> None:
        self.calls = 0

    async def apply(self, msg_type: int, body: Any) -> Any:
        await trio.lowlevel.checkpoint()
        self.calls += 1
        raise ApplyError("No cluster leader")


async def test_a_failed_apply_is_the_rpc_error_and_duties_carry_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    applier = FailingApplier()
    env = in_process(applier=applier, members=lambda: [member("client-1")])
    assert await remote_error(env, "KVS.Apply", kv("set", "k")) == "No cluster leader"
    async with running_duties(env):
        await trio.sleep(125)
        assert env.catalog.duties.reconciled == 3  # retried every interval, never crashed
    assert applier.calls >= 4
    assert any("reconcile failed: No cluster leader" in line for line in env.log.lines)
