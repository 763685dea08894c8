"""``/v1/catalog/*``, ``/v1/health/*``, ``/v1/status/*`` and ``/v1/coordinate/*`` (Consul
0.7's ``catalog_endpoint.go``, ``health_endpoint.go``, ``status_endpoint.go``,
``coordinate_endpoint.go``): each a call of the catalog's RPC endpoint, its reply reshaped
(empty lists as ``[]``, as the reference replaces nil), the query headers set. Consul 0.8's
node ID and metadata ride along: ``ID``/``NodeMeta`` in a register body, ``ID``/``Meta`` on
nodes, ``?node-meta=key:value`` filters on catalog nodes, services and service, and on health
service, checks and state.
"""

from __future__ import annotations

from typing import Any

from ..catalog.constants import HEALTH_PASSING
from ..catalog.structs import HealthCheck, NodeService, RegisterRequest
from . import go_json, shapes
from .constants import (
    ERR_DECODE_FAILED,
    ERR_MISSING_CHECK_STATE,
    ERR_MISSING_NODE_NAME,
    ERR_MISSING_SERVICE_NAME,
)
from .context import APIContext, Route
from .go_json import BodyError
from .messages import HTTPError, Request, Response, json_response

__all__ = ["ROUTES", "node_meta_filters", "register_request"]


def _source(api: APIContext, request: Request) -> dict[str, str]:
    near = request.get("near")
    if near == "_agent":
        near = api.node_name
    return {"Datacenter": api.dc(request), "Node": near}


def node_meta_filters(request: Request) -> dict[str, str] | None:
    """``parseMetaFilter``: each ``?node-meta=key:value`` (repeatable; all must match) split at
    its first ``:``, a value without one meaning the empty value (the reference refuses
    none); a later pair of the same key wins. None when the parameter is absent."""
    if not request.has("node-meta"):
        return None
    filters: dict[str, str] = {}
    for raw in request.all("node-meta"):
        key, _, value = raw.partition(":")
        filters[key] = value
    return filters


def _service_query(api: APIContext, request: Request, prefix: str) -> dict[str, Any]:
    """The request fields of a query about the service named after ``prefix`` (``?tag=``
    filters when present, even empty; ``?node-meta=`` by node metadata)."""
    return {
        "ServiceName": api.required_tail(request, prefix, ERR_MISSING_SERVICE_NAME),
        "ServiceTag": request.get("tag"),
        "TagFilter": request.has("tag"),
        "Source": _source(api, request),
        "NodeMetaFilters": node_meta_filters(request),
    }


def _decode(request: Request) -> dict[str, Any]:
    try:
        return go_json.as_object(go_json.loads(request.body), "body")
    except BodyError as exc:
        raise HTTPError(400, ERR_DECODE_FAILED + str(exc)) from None


def _service(obj: Any) -> NodeService | None:
    if obj is None:
        return None
    m = go_json.as_object(obj, "Service")
    tags = go_json.get_str_list(m, "Tags")
    return NodeService(
        id=go_json.get_str(m, "ID"),
        service=go_json.get_str(m, "Service"),
        tags=None if tags is None else tuple(tags),
        address=go_json.get_str(m, "Address"),
        port=go_json.get_int(m, "Port"),
        enable_tag_override=go_json.get_bool(m, "EnableTagOverride"),
    )


def _check(obj: Any) -> HealthCheck:
    m = go_json.as_object(obj, "Check")
    return HealthCheck(
        node=go_json.get_str(m, "Node"),
        check_id=go_json.get_str(m, "CheckID"),
        name=go_json.get_str(m, "Name"),
        status=go_json.get_str(m, "Status"),
        notes=go_json.get_str(m, "Notes"),
        output=go_json.get_str(m, "Output"),
        service_id=go_json.get_str(m, "ServiceID"),
    )


def register_request(body: dict[str, Any], datacenter: str, token: str) -> RegisterRequest:
    """A ``structs.RegisterRequest`` from a JSON body (keys matched ignoring case), 0.8's
    ``ID`` and ``NodeMeta`` included. Neither is checked here, as the reference's handler
    (the server answers a bad ID with ``Bad node ID: ...``; NodeMeta is stored as given)."""
    try:
        check = go_json.get(body, "Check")
        checks = go_json.get(body, "Checks")
        if checks is not None and not isinstance(checks, list):
            raise BodyError("'Checks' expected type '[]HealthCheck'")
        return RegisterRequest(
            datacenter=go_json.get_str(body, "Datacenter") or datacenter,
            id=go_json.get_str(body, "ID"),
            node=go_json.get_str(body, "Node"),
            address=go_json.get_str(body, "Address"),
            tagged_addresses=go_json.get_str_map(body, "TaggedAddresses"),
            node_meta=go_json.get_str_map(body, "NodeMeta"),
            service=_service(go_json.get(body, "Service")),
            check=None if check is None else _check(check),
            checks=None if checks is None else [_check(c) for c in checks],
            token=token,
        )
    except BodyError as exc:
        raise HTTPError(400, ERR_DECODE_FAILED + str(exc)) from None


# ------------------------------------------------------------------ catalog


async def catalog_register(api: APIContext, request: Request) -> Response:
    args = register_request(_decode(request), api.datacenter, api.token(request))
    await api.rpc("Catalog.Register", args.to_wire())
    return json_response(True, request)


async def catalog_deregister(api: APIContext, request: Request) -> Response:
    body = _decode(request)
    try:
        args = {
            "Datacenter": go_json.get_str(body, "Datacenter") or api.datacenter,
            "Node": go_json.get_str(body, "Node"),
            "ServiceID": go_json.get_str(body, "ServiceID"),
            "CheckID": go_json.get_str(body, "CheckID"),
            "Token": api.token(request),
        }
    except BodyError as exc:
        raise HTTPError(400, ERR_DECODE_FAILED + str(exc)) from None
    await api.rpc("Catalog.Deregister", args)
    return json_response(True, request)


async def catalog_datacenters(api: APIContext, request: Request) -> Response:
    out = await api.rpc("Catalog.ListDatacenters", {})
    return json_response(list(out or []), request)


async def catalog_nodes(api: APIContext, request: Request) -> Response:
    fields = {"Source": _source(api, request), "NodeMetaFilters": node_meta_filters(request)}
    reply, headers = await api.read(request, "Catalog.ListNodes", fields)
    nodes = [shapes.node(n) for n in reply.get("Nodes") or ()]
    return json_response(nodes, request, headers=headers)


async def catalog_services(api: APIContext, request: Request) -> Response:
    fields = {"Source": _source(api, request), "NodeMetaFilters": node_meta_filters(request)}
    reply, headers = await api.read(request, "Catalog.ListServices", fields)
    services = {name: list(tags or ()) for name, tags in (reply.get("Services") or {}).items()}
    return json_response(services, request, headers=headers)


async def catalog_service(api: APIContext, request: Request) -> Response:
    fields = _service_query(api, request, "/v1/catalog/service/")
    reply, headers = await api.read(request, "Catalog.ServiceNodes", fields)
    nodes = [shapes.service_node(n) for n in reply.get("ServiceNodes") or ()]
    return json_response(nodes, request, headers=headers)


async def catalog_node(api: APIContext, request: Request) -> Response:
    name = api.required_tail(request, "/v1/catalog/node/", ERR_MISSING_NODE_NAME)
    reply, headers = await api.read(request, "Catalog.NodeServices", {"Node": name})
    found = reply.get("NodeServices")
    if found is None:
        return json_response(None, request, headers=headers)
    services = {
        str(sid): shapes.node_service(s) for sid, s in (found.get("Services") or {}).items()
    }
    body = {"Node": shapes.node(found.get("Node") or {}), "Services": services}
    return json_response(body, request, headers=headers)


# ------------------------------------------------------------------ health


async def _checks(
    api: APIContext, request: Request, method: str, fields: dict[str, Any]
) -> Response:
    reply, headers = await api.read(request, method, fields)
    return json_response(shapes.health_checks(reply.get("HealthChecks")), request, headers=headers)


async def health_checks(api: APIContext, request: Request) -> Response:
    name = api.required_tail(request, "/v1/health/checks/", ERR_MISSING_SERVICE_NAME)
    fields = {
        "ServiceName": name,
        "Source": _source(api, request),
        "NodeMetaFilters": node_meta_filters(request),
    }
    return await _checks(api, request, "Health.ServiceChecks", fields)


async def health_state(api: APIContext, request: Request) -> Response:
    state = api.required_tail(request, "/v1/health/state/", ERR_MISSING_CHECK_STATE)
    fields = {
        "State": state,
        "Source": _source(api, request),
        "NodeMetaFilters": node_meta_filters(request),
    }
    return await _checks(api, request, "Health.ChecksInState", fields)


async def health_node(api: APIContext, request: Request) -> Response:
    node = api.required_tail(request, "/v1/health/node/", ERR_MISSING_NODE_NAME)
    return await _checks(api, request, "Health.NodeChecks", {"Node": node})


async def health_service(api: APIContext, request: Request) -> Response:
    fields = _service_query(api, request, "/v1/health/service/")
    reply, headers = await api.read(request, "Health.ServiceNodes", fields)
    nodes = [shapes.check_service_node(n) for n in reply.get("Nodes") or ()]
    if request.has("passing"):
        nodes = [n for n in nodes if all(c["Status"] == HEALTH_PASSING for c in n["Checks"])]
    return json_response(nodes, request, headers=headers)


# ------------------------------------------------------------------ status


async def status_leader(api: APIContext, request: Request) -> Response:
    leader = await api.rpc("Status.Leader", {})
    return json_response(leader if isinstance(leader, str) else "", request)


async def status_peers(api: APIContext, request: Request) -> Response:
    peers = await api.rpc("Status.Peers", {})
    return json_response(list(peers or []), request)


# ------------------------------------------------------------------ coordinates


def _coord(obj: Any) -> dict[str, Any] | None:
    """serf's ``coordinate.Coordinate`` in its JSON field order (nil as null)."""
    if not isinstance(obj, dict):
        return None
    return {
        "Vec": list(obj.get("Vec") or ()),
        "Error": obj.get("Error", 0.0),
        "Adjustment": obj.get("Adjustment", 0.0),
        "Height": obj.get("Height", 0.0),
    }


def _coordinates(items: Any) -> list[dict[str, Any]]:
    """``structs.Coordinates`` as JSON, ``[]`` for nil (as the reference replaces it)."""
    return [
        {"Node": item.get("Node", ""), "Coord": _coord(item.get("Coord"))}
        for item in items or ()
        if isinstance(item, dict)
    ]


async def coordinate_datacenters(api: APIContext, request: Request) -> Response:
    """``Coordinate.ListDatacenters`` (no query options, no index headers)."""
    maps = await api.rpc("Coordinate.ListDatacenters", {})
    body = [
        {"Datacenter": m.get("Datacenter", ""), "Coordinates": _coordinates(m.get("Coordinates"))}
        for m in maps or ()
        if isinstance(m, dict)
    ]
    return json_response(body, request)


async def coordinate_nodes(api: APIContext, request: Request) -> Response:
    """``Coordinate.ListNodes``: a blocking query with the ``X-Consul-*`` headers."""
    reply, headers = await api.read(request, "Coordinate.ListNodes", {})
    return json_response(_coordinates(reply.get("Coordinates")), request, headers=headers)


async def coordinate_node(api: APIContext, request: Request) -> Response:
    """One node's entry (a later Consul's route, kept here): ``Coordinate.ListNodes`` read
    through the same query path, filtered; 404 with the headers when the node has none."""
    node = request.tail("/v1/coordinate/node/")
    reply, headers = await api.read(request, "Coordinate.ListNodes", {})
    found = [c for c in _coordinates(reply.get("Coordinates")) if c["Node"] == node]
    if not found:
        return Response(404, headers)
    return json_response(found, request, headers=headers)


_GET = frozenset({"GET", "HEAD"})
_PUT = frozenset({"PUT"})

ROUTES = {
    "/v1/catalog/register": Route(catalog_register, _PUT),
    "/v1/catalog/deregister": Route(catalog_deregister, _PUT),
    "/v1/catalog/datacenters": Route(catalog_datacenters),
    "/v1/catalog/nodes": Route(catalog_nodes),
    "/v1/catalog/services": Route(catalog_services),
    "/v1/catalog/service/": Route(catalog_service),
    "/v1/catalog/node/": Route(catalog_node),
    "/v1/health/node/": Route(health_node),
    "/v1/health/checks/": Route(health_checks),
    "/v1/health/service/": Route(health_service),
    "/v1/health/state/": Route(health_state),
    "/v1/status/leader": Route(status_leader),
    "/v1/status/peers": Route(status_peers),
    "/v1/coordinate/datacenters": Route(coordinate_datacenters),
    "/v1/coordinate/nodes": Route(coordinate_nodes),
    "/v1/coordinate/node/": Route(coordinate_node),
}
