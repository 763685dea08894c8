"""``agentrpc operator raft list-peers|remove-peer``: Consul's ``consul operator raft``
commands over the HTTP API (``/v1/operator/raft/configuration`` and ``/v1/operator/raft/peer``).

Registered on the main app with ``app.add_typer(operator_command.app, name="operator")``.
Texts follow the reference: the table ``Node  ID  Address  State  Voter``; ``Removed peer with
address "IP:port"`` (or ``with id "ID"``); failures as ``Error getting peers: Failed to retrieve
raft configuration: ...`` and ``Error removing peer: ...`` (exit status 1), the agent's text in
``Unexpected response code: 500 (...)``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..catalog.go_text import go_quote
from ..http_api.client import DEFAULT_TIMEOUT, HTTPClientError
from .agent_options import AsJson, columnize, print_json
from .common import echo, fail
from .kv_command import Datacenter, HTTPAddr, HTTPTimeout, Stale, Token, client, explain

app = typer.Typer(
    name="operator",
    help="Cluster-level operations for operators, over the HTTP API.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
raft_app = typer.Typer(
    name="raft",
    help="Inspect and change the Raft configuration of the servers.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(raft_app, name="raft")


def _explain(exc: HTTPClientError) -> str:
    """The client's one line, with what to do (see :func:`kv_command.explain`)."""
    return explain(exc)


def _unexpected(status: int, body: bytes) -> str:
    """Go api's text for an answer that is not 200 (the HTTP client raises it for the others)."""
    return f"Unexpected response code: {status} ({body.decode('utf-8', 'replace').strip()})"


def peer_rows(reply: Any) -> list[dict[str, Any]]:
    """The servers of a ``/v1/operator/raft/configuration`` answer, labelled for the table and
    for ``--json``."""
    servers = (reply or {}).get("Servers") if isinstance(reply, dict) else None
    return [
        {
            "node": str(server.get("Node", "")),
            "id": str(server.get("ID", "")),
            "address": str(server.get("Address", "")),
            "state": "leader" if server.get("Leader") else "follower",
            "voter": bool(server.get("Voter")),
        }
        for server in servers or ()
        if isinstance(server, dict)
    ]


def peer_table(rows: list[dict[str, Any]]) -> str:
    """The reference's table (Go's ``%v`` of a bool: ``true`` / ``false``)."""
    lines = [["Node", "ID", "Address", "State", "Voter"]]
    for row in rows:
        voter = "true" if row["voter"] else "false"
        lines.append([row["node"], row["id"], row["address"], row["state"], voter])
    return columnize(lines)


@raft_app.command("list-peers")
def list_peers(
    http_addr: HTTPAddr = None,
    token: Token = None,
    datacenter: Datacenter = "",
    stale: Stale = False,
    timeout: HTTPTimeout = DEFAULT_TIMEOUT,
    as_json: AsJson = False,
) -> None:
    """Display the current Raft peer configuration."""
    params = [("stale", "")] if stale else []
    with client(http_addr, token, datacenter, timeout) as http:
        try:
            answer = http.request("GET", "/v1/operator/raft/configuration", params)
            if answer.status != 200:
                raise HTTPClientError(_unexpected(answer.status, answer.body))
            reply = answer.json()
        except HTTPClientError as exc:
            fail(f"Error getting peers: Failed to retrieve raft configuration: {_explain(exc)}")
        except ValueError as exc:
            fail(f"Error getting peers: Failed to retrieve raft configuration: bad JSON: {exc}")
    rows = peer_rows(reply)
    if as_json:
        print_json(rows)
        return
    echo(peer_table(rows))


@raft_app.command("remove-peer")
def remove_peer(
    address: Annotated[
        str, typer.Option("--address", help="The address to remove from the Raft configuration.")
    ] = "",
    server_id: Annotated[
        str, typer.Option("--id", help="The ID to remove from the Raft configuration.")
    ] = "",
    http_addr: HTTPAddr = None,
    token: Token = None,
    datacenter: Datacenter = "",
    timeout: HTTPTimeout = DEFAULT_TIMEOUT,
) -> None:
    """Remove a server with the given --address (or --id) from the Raft configuration.

    For a peer left behind in the Raft quorum although the server is gone; a server that still
    shows in `agentrpc members` is better cleaned up with `agentrpc force-leave`."""
    if not address and not server_id:
        fail("Error removing peer: an address or id is required for the peer to remove")
    if address and server_id:
        fail("Error removing peer: cannot give both an address and id")
    params = [("address", address)] if address else [("id", server_id)]
    with client(http_addr, token, datacenter, timeout) as http:
        try:
            answer = http.request("DELETE", "/v1/operator/raft/peer", params)
            if answer.status != 200:
                raise HTTPClientError(_unexpected(answer.status, answer.body))
        except HTTPClientError as exc:
            fail(f"Error removing peer: {_explain(exc)}")
    if address:
        echo(f"Removed peer with address {go_quote(address)}")
    else:
        echo(f"Removed peer with id {go_quote(server_id)}")


__all__ = ["app", "peer_rows", "peer_table"]
