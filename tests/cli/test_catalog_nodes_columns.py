"""``agentrpc catalog nodes`` prints Consul 0.9's columns against a real agent: ``Node  ID
Address  DC`` with the ID cut at its first ``-``, ``--detailed`` with the full ID,
``TaggedAddresses`` and ``Meta``, ``--json`` carrying ``ID`` and ``Meta``, ``--node-meta``
filtering."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import trio
from cli_support import cli, err, out, serve

from agentrpc.cli.catalog_command import short_id

ID1 = "cda916bc-a357-4a19-b886-59419fcee50c"


def test_short_id_is_the_first_group() -> None:
    assert short_id(ID1) == "cda916bc"
    assert short_id("") == ""
    assert short_id("plain") == "plain"
    assert short_id("-lead") == "-lead"  # a '-' at 0 keeps the whole ID, as Consul's idx > 0


def _put(url: str, body: dict[str, Any]) -> bytes:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT")
    with urllib.request.urlopen(request, timeout=10) as reply:
        return bytes(reply.read())


async def test_catalog_nodes_columns_detailed_json_and_node_meta() -> None:
    args = ("--http-addr", "127.0.0.1:0")
    async with serve(*args, node="cols", ready=b"HTTP API listening on") as agent:
        match = re.search(rb"HTTP API listening on (\S+)", agent.stderr)
        assert match is not None
        addr = match.group(1).decode()
        url = f"http://{addr}/v1/catalog/register"
        meta = {"rack": "r1", "env": "prod"}
        body = {"Node": "ext-a", "Address": "10.0.0.1", "ID": ID1, "NodeMeta": meta,
                "TaggedAddresses": {"wan": "203.0.113.1"}}  # fmt: skip
        assert await trio.to_thread.run_sync(_put, url, body) == b"true"
        body = {"Node": "ext-b", "Address": "10.0.0.2"}
        assert await trio.to_thread.run_sync(_put, url, body) == b"true"
        http = ("--http-addr", addr)

        plain = out(await cli("catalog", "nodes", *http)).splitlines()
        assert plain[0] == "Node   ID        Address    DC"
        assert plain[1].startswith("cols ")
        assert plain[2:] == [
            "ext-a  cda916bc  10.0.0.1   dc1",
            "ext-b            10.0.0.2   dc1",
        ]

        detailed = out(await cli("catalog", "nodes", "--detailed", *http)).splitlines()
        assert re.split(r"\s{2,}", detailed[0]) == [
            "Node", "ID", "Address", "DC", "TaggedAddresses", "Meta",
        ]  # fmt: skip
        assert re.split(r"\s{2,}", detailed[2]) == [
            "ext-a", ID1, "10.0.0.1", "dc1", "wan=203.0.113.1", "env=prod, rack=r1",
        ]  # fmt: skip
        assert re.split(r"\s{2,}", detailed[3].rstrip()) == ["ext-b", "10.0.0.2", "dc1"]
        assert detailed[3].index("10.0.0.2") == detailed[0].index("Address")

        listed = json.loads(out(await cli("catalog", "nodes", "--json", *http)))
        ext_a = next(n for n in listed if n["Node"] == "ext-a")
        assert ext_a == {
            "ID": ID1,
            "Node": "ext-a",
            "Address": "10.0.0.1",
            "Datacenter": "dc1",
            "TaggedAddresses": {"wan": "203.0.113.1"},
            "Meta": {"env": "prod", "rack": "r1"},
        }
        ext_b = next(n for n in listed if n["Node"] == "ext-b")
        assert (ext_b["ID"], ext_b["Meta"]) == ("", {})

        filtered = await cli("catalog", "nodes", "--node-meta", "env=prod", "--json", *http)
        assert [n["Node"] for n in json.loads(out(filtered))] == ["ext-a"]
        both = ("--node-meta", "env=prod", "--node-meta", "rack=r2")
        none = await cli("catalog", "nodes", *both, *http)
        assert none.returncode == 1
        assert "No nodes match the given query - try expanding your search." in err(none)
        bad = await cli("catalog", "nodes", "--node-meta", "env", *http)
        assert bad.returncode != 0 and "--node-meta" in err(bad)
