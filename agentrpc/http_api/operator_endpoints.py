"""``/v1/operator/raft/configuration`` and ``/v1/operator/raft/peer`` (Consul 0.8's
``command/agent/operator_endpoint.go``): the catalog's ``Operator.Raft*`` RPC endpoints.

- ``GET /v1/operator/raft/configuration`` (``?dc``, ``?stale``/``?consistent``, the token):
  ``{"Servers": [{"ID", "Node", "Address", "Leader", "Voter"}], "Index"}`` in Go's field
  order; no ``X-Consul-*`` headers (the reference sets none on this answer). With ``?stale``
  any server answers, so the configuration can be read while there is no leader.
- ``DELETE /v1/operator/raft/peer?address=IP:port`` (``RaftRemovePeerByAddress``) or
  ``?id=ID`` (``RaftRemovePeerByID``), ``?dc``, the token: 200 with an empty body. Neither or
  both parameters is a 400 with the reference's text.

Other methods are 405 with an empty body; an RPC error is a 500 with its text (403 for
``Permission denied``).
"""

from __future__ import annotations

from typing import Any, Final

from .context import APIContext, Route
from .messages import HTTPError, Request, Response, empty_response, json_response

__all__ = [
    "ERR_PEER_NEITHER",
    "ERR_PEER_BOTH",
    "ROUTES",
    "configuration_json",
]

CONFIGURATION_PATH: Final = "/v1/operator/raft/configuration"
PEER_PATH: Final = "/v1/operator/raft/peer"
ERR_PEER_NEITHER: Final = (
    "Must specify either ?id with the server's ID or ?address with IP:port of peer to remove"
)
ERR_PEER_BOTH: Final = "Must specify only one of ?id or ?address"


def configuration_json(reply: Any) -> dict[str, Any]:
    """``RaftConfigurationResponse`` as encoding/json writes it: fields in declaration order,
    no servers as null."""
    if not isinstance(reply, dict):
        reply = {}
    servers = [
        {
            "ID": server.get("ID", ""),
            "Node": server.get("Node", ""),
            "Address": server.get("Address", ""),
            "Leader": bool(server.get("Leader", False)),
            "Voter": bool(server.get("Voter", False)),
        }
        for server in reply.get("Servers") or ()
        if isinstance(server, dict)
    ]
    return {"Servers": servers or None, "Index": int(reply.get("Index") or 0)}


async def raft_configuration(api: APIContext, request: Request) -> Response:
    options = api.options(request)
    args = {"Datacenter": api.dc(request), **options.wire_fields()}
    reply = await api.rpc("Operator.RaftGetConfiguration", args)
    return json_response(configuration_json(reply), request)


async def raft_peer(api: APIContext, request: Request) -> Response:
    has_id = request.has("id")
    has_address = request.has("address")
    if not has_id and not has_address:
        raise HTTPError(400, ERR_PEER_NEITHER)
    if has_id and has_address:
        raise HTTPError(400, ERR_PEER_BOTH)
    args = api.write_args(request, {"Address": request.get("address"), "ID": request.get("id")})
    method = "Operator.RaftRemovePeerByAddress" if has_address else "Operator.RaftRemovePeerByID"
    await api.rpc(method, args)
    return empty_response()


ROUTES: Final = {
    CONFIGURATION_PATH: Route(raft_configuration, frozenset({"GET", "HEAD"})),
    PEER_PATH: Route(raft_peer, frozenset({"DELETE"})),
}
