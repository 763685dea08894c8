"""``agentrpc catalog datacenters|nodes|services``: Consul's ``consul catalog`` commands over
the HTTP API.

Registered on the main app with ``app.add_typer(catalog_command.app, name="catalog")``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..http_api.client import DEFAULT_TIMEOUT, HTTPClientError
from .agent_options import AsJson, print_json
from .common import echo, fail
from .kv_command import Datacenter, HTTPAddr, HTTPTimeout, Stale, Token, client, explain

app = typer.Typer(
    name="catalog",
    help="Query the catalog over the HTTP API.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def node_json(node: dict[str, Any], datacenter: str) -> dict[str, Any]:
    """One node of ``catalog nodes --json`` (``api.Node``'s fields; ``Meta`` ``{}`` when the
    node has none)."""
    return {
        "ID": str(node.get("ID") or ""),
        "Node": str(node.get("Node", "")),
        "Address": str(node.get("Address", "")),
        "Datacenter": datacenter,
        "TaggedAddresses": dict(node.get("TaggedAddresses") or {}),
        "Meta": dict(node.get("Meta") or {}),
    }


def short_id(node_id: str) -> str:
    """The ID as ``consul catalog nodes`` shows it without ``-detailed``: up to its first
    ``-`` (a UUID's first group), whole when it has none."""
    cut = node_id.find("-")
    return node_id[:cut] if cut > 0 else node_id


def _pairs(values: dict[str, str] | None) -> str:
    """``mapToKV``: ``k=v`` pairs sorted by key, joined by ``, ``."""
    return ", ".join(f"{k}={v}" for k, v in sorted((values or {}).items()))


def _meta_params(pairs: list[str]) -> list[tuple[str, str]]:
    """``-node-meta key=value`` (repeatable) as the API's ``node-meta=key:value``."""
    params = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            fail(f"Invalid value for '--node-meta': {pair!r} is not key=value")
        params.append(("node-meta", f"{key}:{value}"))
    return params


@app.command("datacenters")
def datacenters(
    http_addr: HTTPAddr = None,
    token: Token = None,
    timeout: HTTPTimeout = DEFAULT_TIMEOUT,
    as_json: AsJson = False,
) -> None:
    """The known datacenters, nearest first (``--json``: a list of names)."""
    with client(http_addr, token, "", timeout) as http:
        try:
            names = http.request("GET", "/v1/catalog/datacenters").json()
        except HTTPClientError as exc:
            fail(f"Error listing datacenters: {explain(exc)}")
    if as_json:
        print_json([str(name) for name in names or ()])
        return
    for name in names:
        echo(name)


@app.command("nodes")
def nodes(
    service: Annotated[str, typer.Option("--service", help="Only nodes with this service.")] = "",
    detailed: Annotated[
        bool, typer.Option("--detailed", help="Full IDs, tagged addresses and metadata.")
    ] = False,
    node_meta: Annotated[
        list[str] | None,
        typer.Option(
            "--node-meta",
            metavar="KEY=VALUE",
            help="Only nodes with this metadata pair (repeatable; all must match).",
        ),
    ] = None,
    http_addr: HTTPAddr = None,
    token: Token = None,
    datacenter: Datacenter = "",
    stale: Stale = False,
    timeout: HTTPTimeout = DEFAULT_TIMEOUT,
    as_json: AsJson = False,
) -> None:
    """The nodes of the catalog (``Node  ID  Address  DC``, the ID cut to its first group as
    Consul 0.9's ``consul catalog nodes``; ``--detailed`` adds the full ID, ``TaggedAddresses``
    and ``Meta``; ``--json``: a list of objects with ``ID``, ``Node``, ``Address``,
    ``Datacenter``, ``TaggedAddresses`` and ``Meta``, ``[]`` for none)."""
    params = [("stale", "")] if stale else []
    params += _meta_params(node_meta or [])
    with client(http_addr, token, datacenter, timeout) as http:
        try:
            if service:
                found = http.request("GET", f"/v1/catalog/service/{service}", params).json()
                listed = [
                    {
                        "ID": n.get("ID"),
                        "Node": n["Node"],
                        "Address": n["Address"],
                        "TaggedAddresses": n.get("TaggedAddresses"),
                        "Meta": n.get("NodeMeta"),
                    }
                    for n in found
                ]
            else:
                listed = http.request("GET", "/v1/catalog/nodes", params).json()
            dc = datacenter or http.request("GET", "/v1/agent/self").json()["Config"]["Datacenter"]
        except HTTPClientError as exc:
            fail(f"Error listing nodes: {explain(exc)}")
    if as_json:
        print_json([node_json(n, dc) for n in listed or ()])
        return
    if not listed:
        fail("No nodes match the given query - try expanding your search.")
    if detailed:
        header = ["Node", "ID", "Address", "DC", "TaggedAddresses", "Meta"]
        rows = [
            [
                n["Node"],
                str(n.get("ID") or ""),
                n["Address"],
                dc,
                _pairs(n.get("TaggedAddresses")),
                _pairs(n.get("Meta")),
            ]
            for n in listed
        ]
    else:
        header = ["Node", "ID", "Address", "DC"]
        rows = [[n["Node"], short_id(str(n.get("ID") or "")), n["Address"], dc] for n in listed]
    _table([header, *rows])


@app.command("services")
def services(
    node: Annotated[str, typer.Option("--node", help="Only the services of this node.")] = "",
    tags: Annotated[bool, typer.Option("--tags", help="Show the tags too.")] = False,
    http_addr: HTTPAddr = None,
    token: Token = None,
    datacenter: Datacenter = "",
    stale: Stale = False,
    timeout: HTTPTimeout = DEFAULT_TIMEOUT,
    as_json: AsJson = False,
) -> None:
    """The services of the catalog, sorted by name (``--json``: a list of objects with
    ``Name`` and ``Tags``, ``[]`` for none)."""
    params = [("stale", "")] if stale else []
    with client(http_addr, token, datacenter, timeout) as http:
        try:
            if node:
                found = http.request("GET", f"/v1/catalog/node/{node}", params).json()
                listed: dict[str, list[str]] = {}
                for service in ((found or {}).get("Services") or {}).values():
                    listed.setdefault(service["Service"], []).extend(service.get("Tags") or [])
            else:
                listed = http.request("GET", "/v1/catalog/services", params).json()
        except HTTPClientError as exc:
            fail(f"Error listing services: {explain(exc)}")
    if as_json:
        print_json(
            [
                {"Name": name, "Tags": sorted(set(listed[name] or ()))}
                for name in sorted(listed or {})
            ]
        )
        return
    if not listed:
        fail("No services match the given query - try expanding your search.")
    if tags:
        _table([[name, ",".join(sorted(set(listed[name])))] for name in sorted(listed)])
        return
    for name in sorted(listed):
        echo(name)


__all__ = ["app", "node_json", "short_id"]
