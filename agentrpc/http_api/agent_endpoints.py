"""``/v1/agent/*``, ``/v1/event/*`` and ``/v1/operator/keyring`` (Consul 0.8's
``agent_endpoint.go``, ``event_endpoint.go``, ``operator_endpoint.go``): the agent's own state
and operations, through :class:`~agentrpc.http_api.host.HTTPAgent` and its
:class:`~agentrpc.local_state.LocalAgent`.

Registrations answer only after the agent synced its changes to the catalog (the reference's
``syncChanges`` in the handler); a sync that fails is logged and retried by anti-entropy, and
the registration still answers 200. ``/v1/agent/monitor`` streams the log (chunked, one line a
line, the ring's recent lines first) until the client goes away or the log ends.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final

import trio

from ..catalog.constants import (
    DEFAULT_QUERY_TIME_NS,
    HEALTH_CRITICAL,
    HEALTH_PASSING,
    HEALTH_WARNING,
    MAX_QUERY_TIME_NS,
)
from ..catalog.go_text import go_quote
from ..catalog.rules import format_session_id
from ..local_state.agent_state import LocalAgentError
from ..local_state.definitions import VALID_STATUSES, DefinitionError, parse_check, parse_service
from ..local_state.state import clip_output
from ..log_protocol import INFO, LEVEL_INDEX, clip
from ..serverport.endpoints import RemoteError, RPCCallError
from . import go_json, shapes
from .constants import (
    CONTENT_TEXT,
    ERR_DECODE_FAILED,
    ERR_MISSING_ENABLE,
    ERR_MISSING_NAME,
    ERR_MISSING_SERVICE_ID,
    ERR_PERMISSION_DENIED,
    ERR_UNKNOWN_LOG_LEVEL,
    ERR_WAN_JOIN_CLIENT,
    MONITOR_QUEUE,
)
from .context import APIContext, Route
from .events import (
    USER_EVENT_MAX_VERSION,
    UserEvent,
    UserEventError,
    encode_payload,
    serf_name,
    uuid_to_uint64,
    validate,
)
from .go_json import BodyError
from .messages import (
    ChunkSink,
    HTTPError,
    Request,
    Response,
    empty_response,
    json_response,
    parse_uint,
    query_options,
)

__all__ = ["ROUTES", "agent_self_config"]

_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE: Final = frozenset({"0", "f", "F", "FALSE", "false", "False"})
MONITOR_BATCH: Final = 256
"""Lines written in one chunk at most when a monitor has a backlog."""


def _fail(exc: DefinitionError | LocalAgentError) -> HTTPError:
    return HTTPError(exc.status, str(exc))


async def _sync(api: APIContext) -> None:
    await api.agent.local.sync_changes()


# ------------------------------------------------------------------ self, members, lifecycle


def agent_self_config(api: APIContext) -> dict[str, Any]:
    """The ``Config`` of ``/v1/agent/self`` (the reference's field names)."""
    info = api.agent.info
    config: dict[str, Any] = {
        "Bootstrap": False,
        "Datacenter": info.datacenter,
        "DataDir": info.data_dir,
        "LogLevel": info.log_level,
        "NodeID": info.node_id,
        "NodeName": info.node_name,
        "Server": info.server,
        "BindAddr": info.bind_addr,
        "AdvertiseAddr": info.advertise_addr,
        "Ports": dict(info.ports),
        "Revision": info.revision,
        "Version": info.version,
        "VersionPrerelease": info.version_prerelease,
        "SessionTTLMin": info.session_ttl_min_ns,
        "Domain": "consul.",
    }
    config.update(info.extra)
    return config


async def agent_self(api: APIContext, request: Request) -> Response:
    agent = api.agent
    body = {
        "Config": agent_self_config(api),
        "Coord": None if agent.coordinate() is None else dict(agent.coordinate() or {}),
        "Member": shapes.member(agent.local_member()),
        "Stats": {name: dict(section) for name, section in agent.stats().items()},
        "Meta": {},
    }
    return json_response(body, request)


async def agent_members(api: APIContext, request: Request) -> Response:
    wan = request.get("wan") != ""
    members = [shapes.member(m) for m in api.agent.members(wan)]
    return json_response(members, request)


async def agent_join(api: APIContext, request: Request) -> Response:
    wan = request.get("wan") != ""
    address = request.tail("/v1/agent/join/")
    if wan and not api.agent.info.server:
        raise HTTPError(500, ERR_WAN_JOIN_CLIENT)
    api.log.throttled(
        INFO, "http:join", f"agent: joining {'WAN' if wan else 'LAN'}: {clip(address)}"
    )
    _, error = await api.agent.join([address], wan)
    if error:
        raise HTTPError(500, error)
    return empty_response()


async def agent_force_leave(api: APIContext, request: Request) -> Response:
    error = await api.agent.force_leave(request.tail("/v1/agent/force-leave/"))
    if error:
        raise HTTPError(500, error)
    return empty_response()


async def agent_leave(api: APIContext, request: Request) -> Response:
    error = await api.agent.leave()
    if error:
        raise HTTPError(500, error)
    api.agent.shutdown()
    return empty_response()


async def agent_reload(api: APIContext, request: Request) -> Response:
    error = await api.agent.reload()
    if error:
        raise HTTPError(500, error)
    return empty_response()


async def agent_monitor(api: APIContext, request: Request) -> Response:
    level_name = (request.get("loglevel") or "INFO").upper()
    level = LEVEL_INDEX.get(level_name)
    if level is None:
        raise HTTPError(400, ERR_UNKNOWN_LOG_LEVEL + clip(level_name))
    subscription = api.agent.subscribe_log(level, MONITOR_QUEUE)

    async def stream(sink: ChunkSink) -> None:
        lines = subscription.lines
        try:
            replay = subscription.replay
            for start in range(0, len(replay), MONITOR_BATCH):
                chunk = replay[start : start + MONITOR_BATCH]
                await sink.send("".join(f"{line}\n" for line in chunk).encode("utf-8", "replace"))
            while True:
                try:
                    batch = [await lines.receive()]
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return
                while len(batch) < MONITOR_BATCH:
                    try:
                        batch.append(lines.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                        break
                await sink.send("".join(f"{line}\n" for line in batch).encode("utf-8", "replace"))
        finally:
            if subscription.dropped:
                api.log.warn(f"agent: Dropped {subscription.dropped} logs during monitor request")
            subscription.close()

    return Response(200, [("Content-Type", CONTENT_TEXT)], stream=stream)


# ------------------------------------------------------------------ services and checks


async def agent_services(api: APIContext, request: Request) -> Response:
    services = {
        sid: shapes.node_service(s.to_wire()) for sid, s in api.agent.local.services().items()
    }
    return json_response(services, request)


async def agent_checks(api: APIContext, request: Request) -> Response:
    checks = {cid: shapes.health_check(c.to_wire()) for cid, c in api.agent.local.checks().items()}
    return json_response(checks, request)


def _body(request: Request) -> Any:
    try:
        return go_json.loads(request.body)
    except BodyError as exc:
        raise HTTPError(400, ERR_DECODE_FAILED + str(exc)) from None


async def agent_service_register(api: APIContext, request: Request) -> Response:
    local = api.agent.local
    try:
        definition = parse_service(_body(request))
        if request.get("replace-existing-checks") in _TRUE:
            keep = {check.check_id for check in definition.checks}
            for check_id, check in local.checks().items():
                if check.service_id == definition.service.id and check_id not in keep:
                    local.remove_check(check_id)
        local.add_service(definition, api.token(request) if _has_token(request) else "")
    except (DefinitionError, LocalAgentError) as exc:
        raise _fail(exc) from None
    await _sync(api)
    return empty_response()


def _has_token(request: Request) -> bool:
    return bool(request.get("token") or request.header("X-Consul-Token"))


async def _deregister(api: APIContext, remove: Callable[[str], object], ident: str) -> Response:
    """Remove one service or check of the local agent, then sync."""
    try:
        remove(ident)
    except LocalAgentError as exc:
        raise _fail(exc) from None
    await _sync(api)
    return empty_response()


async def agent_service_deregister(api: APIContext, request: Request) -> Response:
    return await _deregister(
        api, api.agent.local.remove_service, request.tail("/v1/agent/service/deregister/")
    )


def _enable(request: Request) -> bool:
    if not request.has("enable"):
        raise HTTPError(400, ERR_MISSING_ENABLE)
    raw = request.get("enable")
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise HTTPError(400, f"Invalid value for enable: {go_quote(clip(raw))}")


async def agent_service_maintenance(api: APIContext, request: Request) -> Response:
    service_id = request.tail("/v1/agent/service/maintenance/")
    if not service_id:
        raise HTTPError(400, ERR_MISSING_SERVICE_ID)
    enable = _enable(request)
    state = api.agent.local.state
    try:
        if enable:
            state.enable_service_maintenance(service_id, request.get("reason"), api.token(request))
        else:
            state.disable_service_maintenance(service_id)
    except KeyError as exc:
        raise HTTPError(404, str(exc.args[0])) from None
    await _sync(api)
    return empty_response()


async def agent_maintenance(api: APIContext, request: Request) -> Response:
    enable = _enable(request)
    state = api.agent.local.state
    if enable:
        state.enable_node_maintenance(request.get("reason"), api.token(request))
    else:
        state.disable_node_maintenance()
    await _sync(api)
    return empty_response()


async def agent_check_register(api: APIContext, request: Request) -> Response:
    try:
        definition = parse_check(_body(request))
        api.agent.local.add_check(definition, api.token(request) if _has_token(request) else "")
    except (DefinitionError, LocalAgentError) as exc:
        raise _fail(exc) from None
    await _sync(api)
    return empty_response()


async def agent_check_deregister(api: APIContext, request: Request) -> Response:
    return await _deregister(
        api, api.agent.local.remove_check, request.tail("/v1/agent/check/deregister/")
    )


async def _ttl(api: APIContext, check_id: str, status: str, note: str) -> Response:
    try:
        api.agent.local.update_ttl(check_id, status, note)
    except LocalAgentError as exc:
        raise _fail(exc) from None
    await _sync(api)
    return empty_response()


async def agent_check_pass(api: APIContext, request: Request) -> Response:
    check_id = request.tail("/v1/agent/check/pass/")
    return await _ttl(api, check_id, HEALTH_PASSING, request.get("note"))


async def agent_check_warn(api: APIContext, request: Request) -> Response:
    check_id = request.tail("/v1/agent/check/warn/")
    return await _ttl(api, check_id, HEALTH_WARNING, request.get("note"))


async def agent_check_fail(api: APIContext, request: Request) -> Response:
    check_id = request.tail("/v1/agent/check/fail/")
    return await _ttl(api, check_id, HEALTH_CRITICAL, request.get("note"))


async def agent_check_update(api: APIContext, request: Request) -> Response:
    body = go_json.as_object(_body(request), "body") if request.body else {}
    try:
        status = go_json.get_str(body, "Status")
        output = go_json.get_str(body, "Output")
    except BodyError as exc:
        raise HTTPError(400, ERR_DECODE_FAILED + str(exc)) from None
    if status not in VALID_STATUSES:
        raise HTTPError(400, f"Invalid check status: '{clip(status)}'")
    check_id = request.tail("/v1/agent/check/update/")
    return await _ttl(api, check_id, status, clip_output(output))


# ------------------------------------------------------------------ events


def new_event_id() -> str:
    return format_session_id(os.urandom(16))


async def event_fire(api: APIContext, request: Request) -> Response:
    name = request.tail("/v1/event/fire/")
    if not name:
        raise HTTPError(400, ERR_MISSING_NAME)
    event = UserEvent(
        id=new_event_id(),
        name=name,
        payload=request.body or None,
        node_filter=request.get("node"),
        service_filter=request.get("service"),
        tag_filter=request.get("tag"),
        version=USER_EVENT_MAX_VERSION,
    )
    try:
        validate(event)
        await api.agent.fire_user_event(api.dc(request), serf_name(name), encode_payload(event))
    except (UserEventError, ValueError, RPCCallError) as exc:
        raise HTTPError(500, str(exc)) from None
    except RemoteError as exc:
        # ``Internal.EventFire``'s own error: "Permission denied" is a 403 with that text.
        if ERR_PERMISSION_DENIED in exc.error:
            raise HTTPError(403, ERR_PERMISSION_DENIED) from None
        raise HTTPError(500, exc.error) from None
    return json_response(event.to_json(), request)


async def event_list(api: APIContext, request: Request) -> Response:
    options = query_options(request, "")
    name = request.get("name")
    log = api.agent.events
    deadline = None
    if options.min_query_index > 0:
        wait = options.max_query_time
        if wait > MAX_QUERY_TIME_NS:
            wait = MAX_QUERY_TIME_NS
        elif wait <= 0:
            wait = DEFAULT_QUERY_TIME_NS
        deadline = trio.current_time() + wait / 1e9
    while True:
        events = [e for e in log.events() if not name or e.name == name]
        index = uuid_to_uint64(events[-1].id) if events else 1
        if deadline is not None and index == options.min_query_index:
            with trio.move_on_at(deadline) as scope:
                await log.wait_changed()
            if not scope.cancelled_caught:
                continue
        body = [e.to_json() for e in events]
        return json_response(body, request, headers=[("X-Consul-Index", str(index))])


# ------------------------------------------------------------------ keyring


def _keyring_json(results: Any) -> list[dict[str, Any]]:
    return [
        {
            "WAN": r.wan,
            "Datacenter": r.datacenter,
            "Keys": dict(r.keys),
            "NumNodes": r.num_nodes,
        }
        for r in results
    ]


async def operator_keyring(api: APIContext, request: Request) -> Response:
    relay = 0
    if request.has("relay-factor"):
        parsed = parse_uint(request.get("relay-factor"))
        if parsed is None or parsed > 5:
            raise HTTPError(400, "Error parsing relay factor: must be an integer from 0 to 5")
        relay = parsed
    operations = {"GET": "list", "POST": "install", "PUT": "use", "DELETE": "remove"}
    operation = operations[request.method]
    key = ""
    if operation != "list":
        try:
            body = go_json.as_object(go_json.loads(request.body), "body")
            key = go_json.get_str(body, "Key")
        except BodyError as exc:
            raise HTTPError(400, ERR_DECODE_FAILED + str(exc)) from None
    results = await api.agent.keyring(operation, key, relay)
    errors = [f"{'WAN' if r.wan else 'LAN'}: {r.error}" for r in results if r.error]
    if errors:
        raise HTTPError(500, "; ".join(errors))
    if operation == "list":
        return json_response(_keyring_json(results), request)
    return empty_response()


_GET = frozenset({"GET", "HEAD"})
_PUT = frozenset({"PUT"})

ROUTES = {
    "/v1/agent/self": Route(agent_self),
    "/v1/agent/members": Route(agent_members),
    "/v1/agent/join/": Route(agent_join),
    "/v1/agent/force-leave/": Route(agent_force_leave),
    "/v1/agent/leave": Route(agent_leave, _PUT),
    "/v1/agent/reload": Route(agent_reload, _PUT),
    "/v1/agent/monitor": Route(agent_monitor, _GET),
    "/v1/agent/services": Route(agent_services),
    "/v1/agent/checks": Route(agent_checks),
    "/v1/agent/maintenance": Route(agent_maintenance, _PUT),
    "/v1/agent/service/register": Route(agent_service_register),
    "/v1/agent/service/deregister/": Route(agent_service_deregister),
    "/v1/agent/service/maintenance/": Route(agent_service_maintenance, _PUT),
    "/v1/agent/check/register": Route(agent_check_register),
    "/v1/agent/check/deregister/": Route(agent_check_deregister),
    "/v1/agent/check/pass/": Route(agent_check_pass),
    "/v1/agent/check/warn/": Route(agent_check_warn),
    "/v1/agent/check/fail/": Route(agent_check_fail),
    "/v1/agent/check/update/": Route(agent_check_update, _PUT),
    "/v1/event/fire/": Route(event_fire, _PUT),
    "/v1/event/list": Route(event_list),
    "/v1/operator/keyring": Route(operator_keyring, frozenset({"GET", "POST", "PUT", "DELETE"})),
}
