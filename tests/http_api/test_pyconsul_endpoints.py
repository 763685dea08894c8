"""Every endpoint py-consul wraps, driven by py-consul itself against the HTTP API on loopback
TCP (a real catalog server behind it): the JSON shapes, the status codes and texts, the
``X-Consul-*`` headers, including on 404s."""

from __future__ import annotations

import base64
import json

import consul
import pytest
import requests
import trio
from http_helpers import DC, SERVER, SERVER_ADDR, blocking, cluster


def base(env, position: int = 0) -> str:
    host, port = env.url(position)
    return f"http://{host}:{port}"


def client(env, position: int = 0, **kwargs) -> consul.Consul:
    host, port = env.url(position)
    return consul.Consul(host=host, port=port, **kwargs)


async def http(method: str, url: str, **kwargs) -> requests.Response:
    return await blocking(requests.request, method, url, timeout=30, **kwargs)


async def test_kv_get_put_recurse_keys_separator_raw_flags() -> None:
    async with cluster() as env:
        c = client(env)
        assert await blocking(c.kv.put, "app/config/a", "1") is True
        assert await blocking(c.kv.put, "app/config/b", b"\x00\xff", flags=42) is True
        assert await blocking(c.kv.put, "app/other", None) is True
        index, entry = await blocking(c.kv.get, "app/config/b")
        assert entry["Value"] == b"\x00\xff" and entry["Flags"] == 42
        assert entry["Key"] == "app/config/b" and "Session" not in entry
        assert int(index) == entry["ModifyIndex"]
        _, entries = await blocking(c.kv.get, "app/", recurse=True)
        assert [e["Key"] for e in entries] == ["app/config/a", "app/config/b", "app/other"]
        assert entries[2]["Value"] is None  # a PUT with no body stores an empty value
        _, keys = await blocking(c.kv.get, "app/", keys=True)
        assert keys == ["app/config/a", "app/config/b", "app/other"]
        _, rolled = await blocking(c.kv.get, "app/", keys=True, separator="/")
        assert rolled == ["app/config/", "app/other"]
        _, root = await blocking(c.kv.get, "", keys=True)
        assert root == ["app/config/a", "app/config/b", "app/other"]
        raw = await http("GET", f"{base(env)}/v1/kv/app/config/a?raw")
        assert raw.status_code == 200 and raw.content == b"1"
        assert raw.headers["X-Consul-Index"]
        # The JSON as Go writes it: field order, base64, Session omitted when empty.
        reply = await http("GET", f"{base(env)}/v1/kv/app/config/b")
        assert reply.headers["Content-Type"] == "application/json"
        assert list(json.loads(reply.text)[0]) == [
            "LockIndex",
            "Key",
            "Flags",
            "Value",
            "CreateIndex",
            "ModifyIndex",
        ]
        assert json.loads(reply.text)[0]["Value"] == base64.b64encode(b"\x00\xff").decode()


async def test_kv_missing_key_is_404_with_empty_body_and_the_index_headers() -> None:
    async with cluster() as env:
        c = client(env)
        index, value = await blocking(c.kv.get, "nope")
        assert value is None and int(index) >= 1
        reply = await http("GET", f"{base(env)}/v1/kv/nope")
        assert reply.status_code == 404 and reply.content == b""
        assert reply.headers["X-Consul-KnownLeader"] == "true"
        assert reply.headers["X-Consul-LastContact"] == "0"
        assert int(reply.headers["X-Consul-Index"]) >= 1
        assert (await http("GET", f"{base(env)}/v1/kv/nope/?recurse")).status_code == 404
        assert (await http("GET", f"{base(env)}/v1/kv/nope/?keys")).status_code == 404


async def test_kv_cas_put_and_delete_and_recurse_delete() -> None:
    async with cluster() as env:
        c = client(env)
        assert await blocking(c.kv.put, "init", "a", cas=0) is True
        assert await blocking(c.kv.put, "init", "b", cas=0) is False  # exists already
        _, entry = await blocking(c.kv.get, "init")
        stale = entry["ModifyIndex"]
        assert await blocking(c.kv.put, "init", "c", cas=stale) is True
        assert await blocking(c.kv.put, "init", "d", cas=stale) is False
        _, entry = await blocking(c.kv.get, "init")
        assert entry["Value"] == b"c"
        assert await blocking(c.kv.delete, "init", cas=stale) is False
        assert await blocking(c.kv.delete, "init", cas=entry["ModifyIndex"]) is True
        assert (await blocking(c.kv.get, "init"))[1] is None
        for key in ("svc/a", "svc/b", "svcx"):
            await blocking(c.kv.put, key, "v")
        assert await blocking(c.kv.delete, "svc/", recurse=True) is True
        _, keys = await blocking(c.kv.get, "", keys=True)
        assert keys == ["svcx"]
        assert await blocking(c.kv.delete, "svcx") is True


async def test_kv_errors_with_the_reference_texts() -> None:
    async with cluster() as env:
        url = base(env)
        reply = await http("PUT", f"{url}/v1/kv/", data=b"x")
        assert (reply.status_code, reply.text) == (400, "Missing key name")
        reply = await http("GET", f"{url}/v1/kv/")
        assert (reply.status_code, reply.text) == (400, "Missing key name")
        reply = await http("PUT", f"{url}/v1/kv/k?cas=0&acquire=x", data=b"x")
        assert reply.status_code == 400
        assert reply.text == "Conflicting flags: acquire=x&cas=0"
        reply = await http("PUT", f"{url}/v1/kv/k", data=b"x" * (512 * 1024 + 1))
        assert (reply.status_code, reply.text) == (413, "Value exceeds 524288 byte limit")
        assert (await http("PUT", f"{url}/v1/kv/k", data=b"x" * (512 * 1024))).json() is True
        reply = await http("GET", f"{url}/v1/kv/k?wait=10x&index=1")
        assert (reply.status_code, reply.text) == (400, "Invalid wait time")
        reply = await http("GET", f"{url}/v1/kv/k?index=-1")
        assert (reply.status_code, reply.text) == (400, "Invalid index")
        reply = await http("GET", f"{url}/v1/kv/k?stale&consistent")
        assert reply.status_code == 400
        assert reply.text == "Cannot specify ?stale with ?consistent, conflicting semantics."
        reply = await http("PUT", f"{url}/v1/kv/k?acquire=nosuch", data=b"x")
        assert (reply.status_code, reply.text) == (500, 'invalid session "nosuch"')
        assert (await http("POST", f"{url}/v1/kv/k")).status_code == 405
        reply = await http("GET", f"{url}/v1/kv/k?dc=dc9")
        assert (reply.status_code, reply.text) == (500, "No path to datacenter")
        with pytest.raises(consul.ConsulException, match="No path to datacenter"):
            await blocking(client(env, dc="dc9").kv.get, "k")


async def test_kv_stale_and_consistent_reads_and_the_token_sources() -> None:
    async with cluster() as env:
        c = client(env, consistency="consistent", token="secret")
        assert await blocking(c.kv.put, "t", "v") is True
        assert (await blocking(c.kv.get, "t"))[1]["Value"] == b"v"
        stale = client(env, consistency="stale")
        assert (await blocking(stale.kv.get, "t"))[1]["Value"] == b"v"
        reply = await http("GET", f"{base(env)}/v1/kv/t?token=x", headers={"X-Consul-Token": "y"})
        assert reply.status_code == 200  # tokens are accepted (ACLs are not enforced)


async def test_sessions_create_info_list_node_renew_destroy() -> None:
    async with cluster() as env:
        c = client(env)
        sid = await blocking(
            c.session.create, name="patroni", ttl=15, lock_delay=1, behavior="delete"
        )
        _, info = await blocking(c.session.info, sid)
        assert info["ID"] == sid and info["Name"] == "patroni" and info["Node"] == SERVER
        assert info["TTL"] == "15s" and info["LockDelay"] == 1_000_000_000
        assert info["Behavior"] == "delete" and info["Checks"] == ["serfHealth"]
        default = await blocking(c.session.create)
        _, info = await blocking(c.session.info, default)
        assert info["LockDelay"] == 15_000_000_000 and info["Behavior"] == "release"
        bare = await blocking(c.session.create, checks=[])
        assert (await blocking(c.session.info, bare))[1]["Checks"] == []
        _, listed = await blocking(c.session.list)
        assert {s["ID"] for s in listed} == {sid, default, bare}
        _, mine = await blocking(c.session.node, SERVER)
        assert len(mine) == 3
        renewed = await blocking(c.session.renew, sid)
        assert renewed["ID"] == sid
        assert await blocking(c.session.destroy, sid) is True
        assert (await blocking(c.session.info, sid))[1] is None
        with pytest.raises(consul.NotFound):
            await blocking(c.session.renew, sid)
        reply = await http("PUT", f"{base(env)}/v1/session/renew/{sid}")
        assert (reply.status_code, reply.text) == (404, f"Session id '{sid}' not found")
        assert int(reply.headers["X-Consul-Index"]) >= 1
        reply = await http("GET", f"{base(env)}/v1/session/create")
        assert reply.status_code == 405


async def test_session_create_errors_as_patroni_expects_them() -> None:
    async with cluster() as env:
        url = base(env)
        reply = await http("PUT", f"{url}/v1/session/create", data=json.dumps({"ttl": "5s"}))
        assert reply.status_code == 500
        assert reply.text == "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]"
        reply = await http(
            "PUT",
            f"{url}/v1/session/create",
            data=json.dumps({"ttl": "15.0s", "lockdelay": "0.001s"}),
        )
        assert reply.status_code == 200, reply.text
        sid = reply.json()["ID"]
        info = (await http("GET", f"{url}/v1/session/info/{sid}")).json()[0]
        assert info["TTL"] == "15.0s" and info["LockDelay"] == 1_000_000
        reply = await http("PUT", f"{url}/v1/session/create", data=b"{not json")
        assert reply.status_code == 400 and reply.text.startswith("Request decode failed: ")
        self_config = (await http("GET", f"{url}/v1/agent/self")).json()["Config"]
        assert self_config["SessionTTLMin"] == 10_000_000_000


async def test_catalog_endpoints() -> None:
    async with cluster([SERVER, "client-1"]) as env:
        c = client(env)
        assert await blocking(c.catalog.datacenters) == [DC]
        index, nodes = await blocking(c.catalog.nodes)
        assert [n["Node"] for n in nodes] == ["client-1", SERVER] and int(index) >= 1
        assert list(nodes[0]) == [
            "ID",
            "Node",
            "Address",
            "TaggedAddresses",
            "Meta",
            "CreateIndex",
            "ModifyIndex",
        ]
        service = {"Service": "redis", "ID": "redis1", "Tags": ["primary"], "Port": 6379}
        check = {
            "Node": "ext",
            "CheckID": "redis-alive",
            "Name": "Redis",
            "Status": "passing",
            "ServiceID": "redis1",
        }
        assert await blocking(c.catalog.register, "ext", "10.0.0.9", service=service, check=check)
        _, services = await blocking(c.catalog.services)
        assert services == {"consul": [], "redis": ["primary"]}
        _, redis = await blocking(c.catalog.service, "redis")
        assert redis[0]["ServiceID"] == "redis1" and redis[0]["Address"] == "10.0.0.9"
        assert redis[0]["ServicePort"] == 6379 and redis[0]["ServiceTags"] == ["primary"]
        assert (await blocking(c.catalog.service, "redis", tag="replica"))[1] == []
        _, node = await blocking(c.catalog.node, "ext")
        assert node["Node"]["Address"] == "10.0.0.9" and set(node["Services"]) == {"redis1"}
        index, missing = await blocking(c.catalog.node, "ghost")
        assert missing is None and int(index) >= 1
        assert await blocking(c.catalog.deregister, "ext", service_id="redis1")
        assert (await blocking(c.catalog.service, "redis"))[1] == []
        assert await blocking(c.catalog.deregister, "ext")
        reply = await http(
            "PUT", f"{base(env)}/v1/catalog/register", data=json.dumps({"node": "x"})
        )
        assert (reply.status_code, reply.text) == (500, "Must provide node and address")
        reply = await http("GET", f"{base(env)}/v1/catalog/service/")
        assert (reply.status_code, reply.text) == (400, "Missing service name")


async def test_health_endpoints_passing_and_tag_filters() -> None:
    async with cluster([SERVER, "client-1"]) as env:
        c = client(env)
        for node, status, tags in (("n1", "passing", ["a"]), ("n2", "critical", ["b"])):
            service = {"Service": "web", "ID": "web", "Tags": tags, "Port": 80}
            check = {
                "Node": node,
                "CheckID": "web-check",
                "Name": "web",
                "Status": status,
                "ServiceID": "web",
            }
            assert await blocking(
                c.catalog.register, node, "10.0.0.1", service=service, check=check
            )
        _, nodes = await blocking(c.health.service, "web")
        assert sorted(n["Node"]["Node"] for n in nodes) == ["n1", "n2"]
        assert set(nodes[0]) == {"Node", "Service", "Checks"}
        _, passing = await blocking(c.health.service, "web", passing=True)
        assert [n["Node"]["Node"] for n in passing] == ["n1"]
        _, tagged = await blocking(c.health.service, "web", tag="b")
        assert [n["Node"]["Node"] for n in tagged] == ["n2"]
        _, checks = await blocking(c.health.checks, "web")
        assert sorted(ch["Node"] for ch in checks) == ["n1", "n2"]
        _, critical = await blocking(c.health.state, "critical")
        assert [ch["Node"] for ch in critical] == ["n2"]
        _, any_state = await blocking(c.health.state, "any")
        assert {"serfHealth", "web-check"} <= {ch["CheckID"] for ch in any_state}
        _, node_checks = await blocking(c.health.node, "client-1")
        assert [ch["CheckID"] for ch in node_checks] == ["serfHealth"]
        assert list(node_checks[0]) == [
            "Node",
            "CheckID",
            "Name",
            "Status",
            "Notes",
            "Output",
            "ServiceID",
            "ServiceName",
            "CreateIndex",
            "ModifyIndex",
        ]
        assert (await blocking(c.health.service, "nothing"))[1] == []


async def test_status_coordinate_operator() -> None:
    async with cluster() as env:
        c = client(env)
        assert await blocking(c.status.leader) == SERVER_ADDR
        assert await blocking(c.status.peers) == [SERVER_ADDR]
        datacenters = await blocking(c.coordinate.datacenters)
        assert datacenters[0]["Datacenter"] == DC
        assert datacenters[0]["Coordinates"][0]["Node"] == SERVER  # without the ".dc1"
        assert (await blocking(c.coordinate.nodes))[1] == []  # none sent yet
        coord = {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05}
        update = {"Datacenter": DC, "Node": SERVER, "Coord": coord}
        await env.agents[0].call("Coordinate.Update", update)
        await env.catalog.coordinates.flush()
        index, nodes = await blocking(c.coordinate.nodes)
        assert nodes == [{"Node": SERVER, "Coord": coord}] and int(index) > 1
        config = await blocking(c.operator.raft_config)
        assert config["Servers"] == [
            {
                "ID": SERVER_ADDR,
                "Node": SERVER,
                "Address": SERVER_ADDR,
                "Leader": True,
                "Voter": True,
            }
        ]
        keyring = await blocking(c.operator.keyring_list)
        assert [k["WAN"] for k in keyring] == [True, False] and keyring[1]["NumNodes"] == 2
        assert await blocking(c.operator.keyring_install, "k1") is True
        assert await blocking(c.operator.keyring_use, "k1", relay_factor=2) is True
        assert await blocking(c.operator.keyring_remove, "k1") is True
        assert env.agents[0].keyring_calls[1:] == [
            ("install", "k1", 0),
            ("use", "k1", 2),
            ("remove", "k1", 0),
        ]
        with pytest.raises(consul.ConsulException, match="Invalid key"):
            await blocking(c.operator.keyring_install, "bad")


async def test_agent_self_members_join_force_leave_reload_leave() -> None:
    async with cluster([SERVER, "client-1"]) as env:
        c = client(env)
        me = await blocking(c.agent.self)
        assert me["Config"]["NodeName"] == SERVER and me["Config"]["Datacenter"] == DC
        assert me["Member"]["Name"] == SERVER and me["Member"]["Status"] == 1
        assert set(me) == {"Config", "Coord", "Member", "Stats", "Meta"}
        members = await blocking(c.agent.members)
        assert [m["Name"] for m in members] == [SERVER, "client-1"]
        assert members[0]["Addr"] == "127.0.0.1" and members[0]["Port"] == 8301
        assert [m["Name"] for m in await blocking(c.agent.members, wan=True)] == [f"{SERVER}.{DC}"]
        assert await blocking(client(env, 1).agent.members, wan=True) == []
        assert await blocking(c.agent.join, "127.0.0.2:8301") is True
        assert await blocking(c.agent.join, "127.0.0.3:8302", wan=True) is True
        assert env.agents[0].joined == [(["127.0.0.2:8301"], False), (["127.0.0.3:8302"], True)]
        with pytest.raises(consul.ConsulException, match="no such host"):
            await blocking(c.agent.join, "bad")
        with pytest.raises(consul.ConsulException, match="Must be a server to join WAN cluster"):
            await blocking(client(env, 1).agent.join, "x", wan=True)
        assert await blocking(c.agent.force_leave, "client-1") is True
        with pytest.raises(consul.ConsulException, match="not found"):
            await blocking(c.agent.force_leave, "nope")
        assert await blocking(c.agent.reload) is True and env.agents[0].reloads == 1
        assert (await http("GET", f"{base(env)}/v1/agent/reload")).status_code == 405
        assert await blocking(client(env, 1).agent.leave) is True
        assert env.agents[1].left and env.agents[1].shut_down


async def test_agent_services_checks_register_deregister_ttl_and_maintenance() -> None:
    async with cluster([SERVER, "client-1"]) as env:
        c = client(env, 1)
        assert await blocking(
            c.agent.service.register,
            "web",
            service_id="web1",
            port=8080,
            tags=["v1"],
            check=consul.Check.ttl("30s"),
        )
        services = await blocking(c.agent.services)
        assert services["web1"]["Service"] == "web" and services["web1"]["Port"] == 8080
        checks = await blocking(c.agent.checks)
        assert checks["service:web1"]["Status"] == "critical"
        assert checks["service:web1"]["ServiceName"] == "web"
        # Synced before the answer: another agent sees it in the health endpoint at once.
        other = client(env, 0)
        _, nodes = await blocking(other.health.service, "web")
        assert [n["Node"]["Node"] for n in nodes] == ["client-1"]
        assert (await blocking(other.health.service, "web", passing=True))[1] == []
        assert await blocking(c.agent.check.ttl_pass, "service:web1", "all good")
        _, passing = await blocking(other.health.service, "web", passing=True)
        assert len(passing) == 1
        web_check = next(ch for ch in passing[0]["Checks"] if ch["CheckID"] == "service:web1")
        assert web_check["Status"] == "passing" and web_check["Output"] == "all good"
        assert await blocking(c.agent.check.ttl_warn, "service:web1")
        assert (await blocking(c.agent.checks))["service:web1"]["Status"] == "warning"
        assert await blocking(c.agent.check.ttl_fail, "service:web1", "down")
        assert (await blocking(other.health.checks, "web"))[1][0]["Status"] == "critical"
        assert await blocking(
            c.agent.check.register, "disk", check=consul.Check.ttl("10s"), notes="n"
        )
        assert "disk" in await blocking(c.agent.checks)
        assert "disk" in {
            ch["CheckID"] for ch in (await blocking(other.health.node, "client-1"))[1]
        }
        with pytest.raises(
            consul.ConsulException, match='CheckID "serfHealth" does not have associated TTL'
        ):
            await blocking(c.agent.check.ttl_pass, "serfHealth")
        assert await blocking(c.agent.check.deregister, "disk")
        assert "disk" not in {
            ch["CheckID"] for ch in (await blocking(other.health.node, "client-1"))[1]
        }
        # Maintenance: a critical check on the node, gone when disabled.
        assert await blocking(c.agent.maintenance, "true", "upgrading")
        node_checks = (await blocking(other.health.node, "client-1"))[1]
        maintenance = next(ch for ch in node_checks if ch["CheckID"] == "_node_maintenance")
        assert maintenance["Status"] == "critical" and maintenance["Notes"] == "upgrading"
        assert await blocking(c.agent.maintenance, "false")
        assert "_node_maintenance" not in {
            ch["CheckID"] for ch in (await blocking(other.health.node, "client-1"))[1]
        }
        assert await blocking(c.agent.service.maintenance, "web1", "true")
        assert "_service_maintenance:web1" in await blocking(c.agent.checks)
        assert await blocking(c.agent.service.maintenance, "ghost", "true") is False  # 404
        reply = await http("PUT", f"{base(env, 1)}/v1/agent/service/maintenance/ghost?enable=1")
        assert (reply.status_code, reply.text) == (404, 'No service registered with ID "ghost"')
        assert await blocking(c.agent.service.maintenance, "web1", "false")
        assert await blocking(c.agent.service.deregister, "web1")
        assert await blocking(c.agent.services) == {}
        assert (await blocking(other.health.service, "web"))[1] == []


async def test_agent_registration_errors() -> None:
    async with cluster() as env:
        url = base(env)
        reply = await http("PUT", f"{url}/v1/agent/service/register", data=json.dumps({"port": 1}))
        assert (reply.status_code, reply.text) == (400, "Missing service name")
        body = {"name": "x", "check": {"http": "http://127.0.0.1:1/"}}
        reply = await http("PUT", f"{url}/v1/agent/service/register", data=json.dumps(body))
        assert reply.status_code == 400
        assert reply.text == "Must provide TTL or Script/DockerContainerID/HTTP/TCP and Interval"
        body = {"name": "x", "check": {"ttl": "10s", "status": "bogus"}}
        reply = await http("PUT", f"{url}/v1/agent/service/register", data=json.dumps(body))
        assert reply.text == "Status for checks must 'passing', 'warning', 'critical'"
        body = {"name": "c", "ttl": "10s", "serviceid": "ghost"}
        reply = await http("PUT", f"{url}/v1/agent/check/register", data=json.dumps(body))
        assert (reply.status_code, reply.text) == (500, 'ServiceID "ghost" does not exist')
        body = {"name": "s", "args": ["/bin/true"], "interval": "10s"}
        reply = await http("PUT", f"{url}/v1/agent/check/register", data=json.dumps(body))
        assert reply.status_code == 500 and "Scripts are disabled" in reply.text
        reply = await http("PUT", f"{url}/v1/agent/check/register", data=json.dumps({"ttl": "1s"}))
        assert (reply.status_code, reply.text) == (400, "Missing check name")
        reply = await http("PUT", f"{url}/v1/agent/maintenance?enable=maybe")
        assert (reply.status_code, reply.text) == (400, 'Invalid value for enable: "maybe"')
        reply = await http("PUT", f"{url}/v1/agent/maintenance")
        assert (reply.status_code, reply.text) == (400, "Missing value for enable")
        reply = await http("PUT", f"{url}/v1/agent/service/deregister/consul")
        assert (reply.status_code, reply.text) == (
            500,
            "Deregistering the consul service is not allowed",
        )
        reply = await http(
            "PUT", f"{url}/v1/agent/check/update/x", data=json.dumps({"Status": "meh"})
        )
        assert (reply.status_code, reply.text) == (400, "Invalid check status: 'meh'")


async def test_events_fire_and_list_with_filters() -> None:
    async with cluster([SERVER, "client-1"]) as env:
        c = client(env)
        fired = await blocking(c.event.fire, "deploy", "v42")
        assert fired["Name"] == "deploy" and fired["Version"] == 1 and len(fired["ID"]) == 36
        assert base64.b64decode(fired["Payload"]) == b"v42"
        await blocking(c.event.fire, "other")
        await blocking(c.event.fire, "only-client", node="client-1")
        index, events = await blocking(c.event.list)
        assert [e["Name"] for e in events] == ["deploy", "other"]
        assert events[0]["Payload"] == b"v42" and events[0]["LTime"] == 1
        _, deploys = await blocking(c.event.list, name="deploy")
        assert [e["ID"] for e in deploys] == [fired["ID"]]
        _, on_client = await blocking(client(env, 1).event.list)
        assert [e["Name"] for e in on_client] == ["deploy", "other", "only-client"]
        with pytest.raises(
            consul.ConsulException, match="Cannot provide tag filter without service filter"
        ):
            await blocking(c.event.fire, "x", tag="t")
        with pytest.raises(consul.ConsulException, match="Invalid node filter"):
            await blocking(c.event.fire, "x", node="(")
        reply = await http("GET", f"{base(env)}/v1/event/fire/x")
        assert reply.status_code == 405
        assert int(index) != 0


async def test_agent_monitor_streams_the_log_chunked_until_the_client_goes() -> None:
    async with cluster() as env:
        url = base(env)
        hub = env.agents[0].hub
        hub.logger("agent").info("before the monitor")

        def read_some() -> list[str]:
            with requests.get(
                f"{url}/v1/agent/monitor?loglevel=debug", stream=True, timeout=30
            ) as r:
                assert r.status_code == 200
                assert r.headers["Transfer-Encoding"] == "chunked"
                lines = []
                for line in r.iter_lines():
                    lines.append(line.decode())
                    if "live line 3" in lines[-1]:
                        return lines
            return lines

        async with trio.open_nursery() as nursery:
            result: list[list[str]] = []

            async def reader() -> None:
                result.append(await blocking(read_some))

            nursery.start_soon(reader)
            for _ in range(200):
                await trio.sleep(0.01)
                if hub.subscriber_count:
                    break
            for n in range(1, 4):
                hub.logger("agent").debug(f"live line {n}")
        lines = result[0]
        assert any("[INFO] agent: before the monitor" in line for line in lines)
        assert [line.rsplit(": ", 1)[1] for line in lines if "live line" in line] == [
            "live line 1",
            "live line 2",
            "live line 3",
        ]
        for _ in range(200):  # the client went away: the subscription ends
            if not hub.subscriber_count:
                break
            await trio.sleep(0.01)
        assert hub.subscriber_count == 0
        reply = await http("GET", f"{url}/v1/agent/monitor?loglevel=chatty")
        assert (reply.status_code, reply.text) == (400, "Unknown log level: CHATTY")


async def test_unknown_paths_and_the_index_page() -> None:
    async with cluster() as env:
        url = base(env)
        reply = await http("GET", f"{url}/")
        assert (reply.status_code, reply.text) == (200, "Consul Agent")
        reply = await http("GET", f"{url}/v1/nothing")
        assert reply.status_code == 404 and reply.text == "404 page not found\n"
        reply = await http("GET", f"{url}/v1/catalog/nodes?pretty")
        assert reply.text.startswith("[\n    {") and reply.text.endswith("\n")
