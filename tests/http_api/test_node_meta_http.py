"""Consul 0.8's node ID and metadata over the HTTP API, driven by py-consul and raw HTTP on
loopback TCP (a real catalog server behind it): ``ID``/``NodeMeta`` in ``PUT
/v1/catalog/register``, the ``ID``/``Meta`` of node JSON (``NodeMeta`` on service rows), the
``?node-meta=key:value`` filters (repeatable, all must match) and the ``Bad node ID`` text."""

from __future__ import annotations

import json
from typing import Any

import consul
import requests
from http_helpers import SERVER, blocking, cluster

from agentrpc.http_api.catalog_endpoints import node_meta_filters
from agentrpc.http_api.messages import Request, parse_query

ID1 = "cda916bc-a357-4a19-b886-59419fcee50c"
ID2 = "0e5a2d31-7c3b-4b8e-9f11-2a6c4d5e6f70"


def base(env: Any) -> str:
    host, port = env.url()
    return f"http://{host}:{port}"


async def http(method: str, url: str, **kwargs: Any) -> requests.Response:
    return await blocking(requests.request, method, url, timeout=30, **kwargs)


async def register(env: Any, body: dict[str, Any]) -> requests.Response:
    return await http("PUT", f"{base(env)}/v1/catalog/register", data=json.dumps(body))


def test_node_meta_query_parsing() -> None:
    def parsed(query: str) -> dict[str, str] | None:
        return node_meta_filters(Request("GET", "/v1/catalog/nodes", parse_query(query), {}))

    assert parsed("") is None
    assert parsed("node-meta=env:prod&node-meta=rack:r1") == {"env": "prod", "rack": "r1"}
    assert parsed("node-meta=url:http://x:1") == {"url": "http://x:1"}
    # The reference splits at the first ':' and refuses nothing: no ':' is the empty value.
    assert parsed("node-meta=env") == {"env": ""}
    assert parsed("node-meta=") == {"": ""}
    assert parsed("node-meta=env:a&node-meta=env:b") == {"env": "b"}


async def test_register_with_id_and_meta_then_filter_with_py_consul() -> None:
    async with cluster([SERVER]) as env:
        c = consul.Consul(host=env.url()[0], port=env.url()[1])
        web = {"Service": "web", "Port": 80}
        for name, node_id, meta in (
            ("a", ID1, {"env": "prod", "rack": "r1"}),
            ("b", ID2, {"env": "prod", "rack": "r2"}),
        ):
            check = {"Name": f"{name}-up", "ServiceID": "web", "Status": "passing"}
            body = {"Node": name, "Address": "10.0.0.1", "ID": node_id, "NodeMeta": meta,
                    "Service": web, "Check": check}  # fmt: skip
            reply = await register(env, body)
            assert (reply.status_code, reply.text) == (200, "true")
        reply = await register(env, {"node": "c", "address": "10.0.0.3", "service": web})
        assert reply.status_code == 200
        _, nodes = await blocking(c.catalog.nodes)
        by_name = {n["Node"]: n for n in nodes}
        assert list(by_name["a"]) == [
            "ID", "Node", "Address", "TaggedAddresses", "Meta", "CreateIndex", "ModifyIndex",
        ]  # fmt: skip
        assert (by_name["a"]["ID"], by_name["a"]["Meta"]) == (ID1, {"env": "prod", "rack": "r1"})
        # Registered without them: ID "" and Meta null, as Go writes an unset ID and a nil map.
        assert (by_name["c"]["ID"], by_name["c"]["Meta"]) == ("", None)
        _, prod = await blocking(c.catalog.nodes, node_meta={"env": "prod"})
        assert [n["Node"] for n in prod] == ["a", "b"]
        _, r2 = await blocking(c.catalog.nodes, node_meta={"env": "prod", "rack": "r2"})
        assert [n["Node"] for n in r2] == ["b"]
        _, none = await blocking(c.catalog.nodes, node_meta={"env": "qa"})
        assert none == []
        bare = await http("GET", f"{base(env)}/v1/catalog/nodes?node-meta=env")
        assert (bare.status_code, bare.json()) == (200, [])
        _, services = await blocking(c.catalog.services, node_meta={"rack": "r1"})
        assert services == {"web": []}
        _, rows = await blocking(c.catalog.service, "web", node_meta={"rack": "r2"})
        assert [r["Node"] for r in rows] == ["b"]
        assert list(rows[0])[:5] == ["ID", "Node", "Address", "TaggedAddresses", "NodeMeta"]
        assert (rows[0]["ID"], rows[0]["NodeMeta"]) == (ID2, {"env": "prod", "rack": "r2"})
        _, healthy = await blocking(c.health.service, "web", node_meta={"rack": "r1"})
        assert [(h["Node"]["Node"], h["Node"]["ID"]) for h in healthy] == [("a", ID1)]
        assert healthy[0]["Node"]["Meta"] == {"env": "prod", "rack": "r1"}
        _, checks = await blocking(c.health.checks, "web", node_meta={"rack": "r2"})
        assert [(k["Node"], k["Name"]) for k in checks] == [("b", "b-up")]
        _, states = await blocking(c.health.state, "passing", node_meta={"rack": "r1"})
        assert [(k["Node"], k["Name"]) for k in states] == [("a", "a-up")]
        _, every = await blocking(c.health.state, "passing")
        assert {k["Node"] for k in every} >= {"a", "b", SERVER}
        _, node = await blocking(c.catalog.node, "b")
        assert node["Node"]["ID"] == ID2 and node["Node"]["Meta"]["rack"] == "r2"


async def test_register_errors_and_py_consul_node_meta_on_register() -> None:
    async with cluster([SERVER]) as env:
        c = consul.Consul(host=env.url()[0], port=env.url()[1])
        reply = await register(env, {"Node": "x", "Address": "a", "ID": "nope"})
        assert (reply.status_code, reply.text) == (500, "Bad node ID: uuid string is wrong length")
        reply = await register(env, {"Node": "x", "Address": "a", "NodeMeta": {"k": 1}})
        assert reply.status_code == 400 and reply.text.startswith("Request decode failed: ")
        assert "NodeMeta" in reply.text
        assert (await register(env, {"Node": "x", "Address": "a", "ID": ID1})).status_code == 200
        reply = await register(env, {"Node": "y", "Address": "a", "ID": ID1})
        assert (reply.status_code, reply.text) == (
            500,
            f'failed inserting node: node ID "{ID1}" for node "y" aliases existing node "x"',
        )
        # NodeMeta is stored as given, as the reference's handler does not validate it.
        reply = await register(env, {"Node": "z", "Address": "a", "NodeMeta": {"consul-x": "1"}})
        assert reply.status_code == 200
        # py-consul sends register's node_meta as ?node-meta= query parameters, which the
        # reference's register ignores: the node gets no Meta.
        assert await blocking(c.catalog.register, "pc", "10.0.0.9", node_meta={"env": "prod"})
        _, node = await blocking(c.catalog.node, "pc")
        assert node["Node"]["Meta"] is None
        _, prod = await blocking(c.catalog.nodes, node_meta={"env": "prod"})
        assert prod == []
