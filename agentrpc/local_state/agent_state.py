"""The agent's local services and checks at work (Trio): anti-entropy with the catalog and the
checks the agent runs (Consul 0.7's ``localState.antiEntropy`` and ``CheckTTL``/``CheckHTTP``/
``CheckTCP``).

:class:`LocalAgent` owns a :class:`~agentrpc.local_state.state.LocalState` and, in
:meth:`LocalAgent.run`, one nursery with:

- the anti-entropy loop: a full sync (read the node's services and checks from the catalog,
  mark differences, write them) retried every ``sync_retry`` (15 s) plus stagger until it
  succeeds, then a sync of changes whenever something changes, and the next full sync after
  ``ae_scale(ae_interval, members)`` plus up to as much again of random stagger (60 s for up to
  128 LAN members);
- the TTL watcher (one task for every TTL check: a check not updated within its TTL turns
  critical, ``TTL expired``);
- one task per HTTP or TCP check (first run after a random part of its interval, then every
  interval; each attempt bounded by its timeout, the output by 4 KiB);
- the deferred output writes and the reaper of services whose check has been critical for
  longer than its ``DeregisterCriticalServiceAfter`` (every ``reap_interval``, 30 s).

Catalog writes go through ``call(method, args)`` (the agent's in-process RPC: the same router
and handlers as a socket client). :meth:`sync_changes` is also what an HTTP registration awaits
before it answers, as the reference's handlers do; it never raises for an RPC failure (the
error is logged and returned, anti-entropy retries).
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from ..catalog.constants import CONSUL_SERVICE_ID, CONSUL_SERVICE_NAME, HEALTH_CRITICAL
from ..catalog.structs import HealthCheck, Node, NodeService, NodeSpecificRequest, QueryOptions
from ..log_protocol import DEBUG, ERR, INFO, WARN, LogLike, NullLog, clip
from ..serverport.endpoints import RemoteError, RPCCallError
from .definitions import (
    CHECK_KIND_HTTP,
    CHECK_KIND_TCP,
    CHECK_KIND_TTL,
    ERR_SCRIPTS_DISABLED,
    CheckDefinition,
    DefinitionError,
    ServiceDefinition,
)
from .from_config import ConfigDefinitions
from .probes import check_timeout, http_probe, tcp_probe
from .state import Deregister, LocalState, RemoteState, ae_scale

__all__ = ["Call", "LocalAgent", "LocalAgentError"]

Call = Callable[[str, Any], Awaitable[Any]]

AE_INTERVAL: Final = 60.0
SYNC_RETRY_INTERVAL: Final = 15.0
SYNC_STAGGER_INTERVAL: Final = 3.0
REAP_INTERVAL: Final = 30.0
MIN_CHECK_INTERVAL: Final = 1.0
MAX_CHECKS: Final = 4096
"""Services plus checks one agent keeps (registrations past it are refused)."""
TTL_EXPIRED: Final = "TTL expired"
ERR_CONSUL_SERVICE: Final = f"Deregistering the {CONSUL_SERVICE_ID} service is not allowed"


class LocalAgentError(Exception):
    """An operation the reference refuses; the text is its error (HTTP 500 unless
    ``status`` says otherwise)."""

    def __init__(self, text: str, status: int = 500) -> None:
        super().__init__(text)
        self.status = status


def _permission_denied(error: str) -> bool:
    return "Permission denied" in error or "ACL not found" in error


class LocalAgent:
    """Local services and checks, their anti-entropy and their runners."""

    def __init__(
        self,
        state: LocalState,
        call: Call,
        *,
        logger: LogLike | None = None,
        members: Callable[[], int] = lambda: 1,
        consul_service_port: int | None = None,
        ae_interval: float = AE_INTERVAL,
        sync_retry: float = SYNC_RETRY_INTERVAL,
        reap_interval: float = REAP_INTERVAL,
        clock: Callable[[], float] = trio.current_time,
        rng: random.Random | None = None,
    ) -> None:
        self.state = state
        self._call = call
        self._log: LogLike = logger or NullLog()
        self._members = members
        self.ae_interval = ae_interval
        self.sync_retry = sync_retry
        self.reap_interval = reap_interval
        self._clock = clock
        self._rng = rng or random.Random()
        self.definitions: dict[str, CheckDefinition] = {}
        self.config_services: set[str] = set()
        """IDs of the services the config files registered (see :meth:`load_config`)."""
        self.config_checks: set[str] = set()
        """IDs of the checks the config files registered (a config service's own too)."""
        self._runners: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()
        self._server_up = trio.Event()
        self._deferral_wake = trio.Event()
        self._ttl_deadlines: dict[str, float] = {}
        self._ttl_wake = trio.Event()
        self._sync_lock = trio.Lock()
        self.full_syncs = 0
        self.syncs = 0
        self.last_sync_error = ""
        state._on_change = self.trigger
        if consul_service_port is not None:
            state.add_service(
                NodeService(
                    id=CONSUL_SERVICE_ID, service=CONSUL_SERVICE_NAME, port=consul_service_port
                )
            )

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run anti-entropy and the checks until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for check_id, definition in list(self.definitions.items()):
                self._start_runner(check_id, definition)
            nursery.start_soon(self._anti_entropy)
            nursery.start_soon(self._ttl_watcher)
            nursery.start_soon(self._deferral_loop)
            nursery.start_soon(self._reaper)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def trigger(self) -> None:
        """Something changed: anti-entropy syncs the changes soon."""
        self._changed.set()

    def server_up(self) -> None:
        """Consul's ``ConsulServerUp``: a server became known, so a full sync that failed
        (``No known Consul servers``) is retried now rather than after its retry interval."""
        self._server_up.set()

    # ------------------------------------------------------------------ services and checks

    def _room_for(self, count: int) -> None:
        if len(self.state.services) + len(self.state.checks) + count > MAX_CHECKS:
            raise LocalAgentError(f"agent already has {MAX_CHECKS} services and checks", 429)

    def add_service(self, definition: ServiceDefinition, token: str = "") -> None:
        """``AddService``: the service and its checks (each replaces one of the same ID).

        What is registered here is the API's, no longer the config files' (a reload does not
        remove it; see :meth:`load_config`)."""
        for check in definition.checks:
            self._validate(check)
        self._room_for(1 + len(definition.checks))
        service = definition.service
        self.config_services.discard(service.id)
        self.state.add_service(service, token or definition.token)
        for check in definition.checks:
            self.config_checks.discard(check.check_id)
            self._add_check(check, token or definition.token, service.service)

    def remove_service(self, service_id: str) -> None:
        if service_id == CONSUL_SERVICE_ID and CONSUL_SERVICE_ID in self.state.services:
            raise LocalAgentError(ERR_CONSUL_SERVICE)
        if not service_id:
            raise LocalAgentError("ServiceID missing")
        self._remove_service(service_id)

    def _remove_service(self, service_id: str) -> None:
        self.config_services.discard(service_id)
        for check_id in self.state.remove_service(service_id):
            self.config_checks.discard(check_id)
            self._stop_runner(check_id)
            self.definitions.pop(check_id, None)
        if service_id:
            self._log.throttled(
                INFO, "agent:service-removed", f"agent: removed service {clip(service_id)!r}"
            )

    def _validate(self, check: CheckDefinition) -> None:
        if check.script and not check.ttl_ns and not check.http and not check.tcp:
            raise LocalAgentError(ERR_SCRIPTS_DISABLED)

    def add_check(self, definition: CheckDefinition, token: str = "") -> None:
        """``AddCheck``: its service must be registered here (``ServiceID "x" does not
        exist``)."""
        self._validate(definition)
        service_name = ""
        if definition.service_id:
            service = self.state.services.get(definition.service_id)
            if service is None:
                raise LocalAgentError(f'ServiceID "{definition.service_id}" does not exist')
            service_name = service.service
        if definition.check_id not in self.state.checks:
            self._room_for(1)
        self.config_checks.discard(definition.check_id)
        self._add_check(definition, token, service_name)

    def _add_check(self, definition: CheckDefinition, token: str, service_name: str) -> None:
        check_id = definition.check_id
        self._stop_runner(check_id)
        interval = definition.interval_ns / 1e9
        if definition.kind in (CHECK_KIND_HTTP, CHECK_KIND_TCP) and interval < MIN_CHECK_INTERVAL:
            self._log.warn(
                f"agent: check '{clip(check_id)}' has interval below minimum of "
                f"{MIN_CHECK_INTERVAL:g}s"
            )
        self.definitions[check_id] = definition
        self.state.add_check(definition.health_check(self.state.node_name, service_name), token)
        self._start_runner(check_id, definition)

    def remove_check(self, check_id: str) -> None:
        if not check_id:
            raise LocalAgentError("CheckID missing")
        self._remove_check(check_id)

    def _remove_check(self, check_id: str) -> None:
        self.config_checks.discard(check_id)
        self._stop_runner(check_id)
        self.definitions.pop(check_id, None)
        self.state.remove_check(check_id)

    def load_config(self, found: ConfigDefinitions) -> None:
        """Make the config files' services and checks those of ``found`` (at start, and on
        every reload): the ones the previous config registered and ``found`` lacks are
        removed (a service with its checks), new and changed ones are registered, and one
        whose definition, token and service are as registered is left alone (a check keeps its
        status and output).

        Services and checks registered through the HTTP API are kept (unless ``found`` has one
        of the same ID, which replaces it): a deliberate improvement on Consul 0.8, whose
        reload removes every service and check and registers again only the config's and the
        persisted ones, so that an API registration not persisted is lost.

        Everything is checked before anything changes: :class:`LocalAgentError` (room, a
        ``ServiceID`` that does not exist) leaves the state as it was."""
        state = self.state
        services = {service.service.id: service for service in found.services}
        checks: dict[str, tuple[CheckDefinition, str, str]] = {}
        for service in services.values():
            for check in service.checks:
                checks[check.check_id] = (check, service.token, service.service.service)
        for item in found.checks:
            check = item.definition
            service_name = ""
            if check.service_id in services:
                service_name = services[check.service_id].service.service
            elif check.service_id in state.services and check.service_id == CONSUL_SERVICE_ID:
                service_name = state.services[check.service_id].service
            elif check.service_id:
                raise LocalAgentError(f'ServiceID "{check.service_id}" does not exist', 400)
            checks[check.check_id] = (check, item.token, service_name)
        for check, _, _ in checks.values():
            self._validate(check)
        stale_services = self.config_services - services.keys()
        stale_checks = self.config_checks - checks.keys()
        dropped = {cid for cid, c in state.checks.items() if c.service_id in stale_services}
        kept_services = (state.services.keys() - stale_services) | services.keys()
        kept_checks = (state.checks.keys() - stale_checks - dropped) | checks.keys()
        if len(kept_services) + len(kept_checks) > MAX_CHECKS:
            raise LocalAgentError(
                f"agent would have more than {MAX_CHECKS} services and checks", 429
            )
        removed = registered = 0
        for service_id in stale_services:
            if service_id in state.services:
                self._remove_service(service_id)
                removed += 1
        for check_id in stale_checks:
            if check_id in state.checks:
                self._remove_check(check_id)
                removed += 1
        for service_id, service in services.items():
            if (
                state.services.get(service_id) != service.service
                or state.service_tokens.get(service_id) != service.token
            ):
                state.add_service(service.service, service.token)
                registered += 1
        for check_id, (check, token, service_name) in checks.items():
            current = state.checks.get(check_id)
            if (
                current is None
                or self.definitions.get(check_id) != check
                or state.check_tokens.get(check_id) != token
                or current.service_name != service_name
            ):
                self._add_check(check, token, service_name)
                registered += 1
        self.config_services = set(services)
        self.config_checks = set(checks)
        if removed or registered:
            self._log.info(
                f"agent: config files: {registered} services and checks registered, "
                f"{removed} removed"
            )

    def update_ttl(self, check_id: str, status: str, note: str) -> None:
        """``updateTTLCheck``: pass/warn/fail a TTL check and restart its TTL."""
        definition = self.definitions.get(check_id)
        if definition is None or definition.kind != CHECK_KIND_TTL:
            raise LocalAgentError(f'CheckID "{check_id}" does not have associated TTL')
        self._update_check(check_id, status, note, self._clock(), self._rng.random())
        self._ttl_deadlines[check_id] = self._clock() + definition.ttl_ns / 1e9
        self._ttl_wake.set()

    def services(self) -> dict[str, NodeService]:
        return dict(self.state.services)

    def checks(self) -> dict[str, HealthCheck]:
        return dict(self.state.checks)

    # ------------------------------------------------------------------ runners

    def _start_runner(self, check_id: str, definition: CheckDefinition) -> None:
        kind = definition.kind
        if kind == CHECK_KIND_TTL:
            self._ttl_deadlines[check_id] = self._clock() + definition.ttl_ns / 1e9
            self._ttl_wake.set()
            return
        if kind not in (CHECK_KIND_HTTP, CHECK_KIND_TCP) or self._nursery is None:
            return
        scope = trio.CancelScope()
        self._runners[check_id] = scope
        self._nursery.start_soon(self._run_probe, check_id, definition, scope)

    def _stop_runner(self, check_id: str) -> None:
        scope = self._runners.pop(check_id, None)
        if scope is not None:
            scope.cancel()
        if self._ttl_deadlines.pop(check_id, None) is not None:
            self._ttl_wake.set()

    async def _run_probe(
        self, check_id: str, definition: CheckDefinition, scope: trio.CancelScope
    ) -> None:
        with scope:
            interval = max(definition.interval_ns / 1e9, MIN_CHECK_INTERVAL)
            timeout = check_timeout(interval, definition.timeout_ns / 1e9)
            await trio.sleep(self._rng.random() * interval)
            while True:
                if definition.kind == CHECK_KIND_HTTP:
                    status, output = await http_probe(
                        definition.http,
                        timeout,
                        method=definition.method,
                        headers=definition.header,
                        tls_skip_verify=definition.tls_skip_verify,
                    )
                else:
                    status, output = await tcp_probe(definition.tcp, timeout)
                if status == HEALTH_CRITICAL:
                    self._log.throttled(
                        WARN,
                        f"agent:check-failed:{check_id}",
                        f"agent: Check '{clip(check_id)}' is now critical: {clip(output)}",
                    )
                else:
                    self._log.throttled(
                        DEBUG,
                        f"agent:check-ok:{check_id}",
                        f"agent: Check '{clip(check_id)}' is {status}",
                    )
                self._update_check(check_id, status, output, self._clock(), self._rng.random())
                await trio.sleep(interval)

    async def _ttl_watcher(self) -> None:
        while True:
            self._ttl_wake = trio.Event()
            now = self._clock()
            for check_id, deadline in list(self._ttl_deadlines.items()):
                if deadline <= now:
                    del self._ttl_deadlines[check_id]
                    self._expire(check_id)
            wake = min(self._ttl_deadlines.values(), default=None)
            with trio.move_on_at(wake if wake is not None else float("inf")):
                await self._ttl_wake.wait()

    def _expire(self, check_id: str) -> None:
        check = self.state.checks.get(check_id)
        if check is None:
            return
        self._log.throttled(
            WARN,
            f"agent:ttl-missed:{check_id}",
            f"agent: Check '{clip(check_id)}' missed TTL, is now critical",
        )
        last = check.output
        output = (
            TTL_EXPIRED
            if not last
            else f"{TTL_EXPIRED} (last output before timeout follows): {last}"
        )
        self._update_check(check_id, HEALTH_CRITICAL, output, self._clock(), self._rng.random())

    def _update_check(
        self, check_id: str, status: str, output: str, now: float, stagger: float
    ) -> None:
        """The state's ``update_check``; an output change it defers wakes the deferral loop."""
        if self.state.update_check(check_id, status, output, now, stagger):
            self._deferral_wake.set()

    async def _deferral_loop(self) -> None:
        """Fires the deferred output syncs when they are due; asleep while none is pending."""
        while True:
            self._deferral_wake = trio.Event()
            due = self.state.next_deferral()
            with trio.move_on_at(due if due is not None else math.inf):
                await self._deferral_wake.wait()
            self.state.fire_deferrals(self._clock())

    async def _reaper(self) -> None:
        while True:
            await trio.sleep(self.reap_interval)
            self.reap(self._clock())

    def reap(self, now: float) -> list[str]:
        """Remove the services whose check has been critical past its
        ``DeregisterCriticalServiceAfter``; their IDs."""
        reaped: list[str] = []
        for check_id, since in list(self.state.critical_since.items()):
            definition = self.definitions.get(check_id)
            check = self.state.checks.get(check_id)
            if definition is None or check is None or not check.service_id:
                continue
            limit = definition.deregister_critical_after_ns / 1e9
            if limit > 0 and now - since > limit and check.service_id in self.state.services:
                service_id = check.service_id
                self.remove_service(service_id)
                reaped.append(service_id)
                self._log.info(
                    f"agent: Check '{clip(check_id)}' for service '{clip(service_id)}' has been "
                    "critical for too long; deregistered service"
                )
        return reaped

    # ------------------------------------------------------------------ anti-entropy

    def _stagger(self, interval: float) -> float:
        return self._rng.random() * ae_scale(interval, self._members())

    async def _anti_entropy(self) -> None:
        while True:
            while True:
                error = await self.full_sync()
                if not error:
                    break
                with trio.move_on_after(self.sync_retry + self._stagger(self.sync_retry)):
                    await self._server_up.wait()
                self._server_up = trio.Event()
            interval = ae_scale(self.ae_interval, self._members())
            deadline = self._clock() + interval + self._rng.random() * interval
            while True:
                with trio.move_on_at(deadline):
                    await self._changed.wait()
                if not self._changed.is_set():
                    break
                self._changed = trio.Event()
                if self.state.paused:
                    continue
                await self.sync_changes()

    async def full_sync(self) -> str:
        """``setSyncState`` then ``syncChanges``; the error text, or ""."""
        state = self.state
        request = NodeSpecificRequest(
            datacenter=state.datacenter,
            node=state.node_name,
            options=QueryOptions(token=state.token),
        ).to_wire()
        try:
            services = await self._call("Catalog.NodeServices", request)
            checks = await self._call("Health.NodeChecks", request)
        except (RemoteError, RPCCallError) as exc:
            text = exc.error if isinstance(exc, RemoteError) else str(exc)
            self.last_sync_error = text
            self._log.throttled(
                ERR, "agent:sync-state-failed", f"agent: failed to sync remote state: {clip(text)}"
            )
            return text
        state.set_sync_state(_remote_state(services, checks))
        self.full_syncs += 1
        return await self.sync_changes()

    async def sync_changes(self) -> str:
        """Write what is out of sync; the error text that stopped it, or ""."""
        async with self._sync_lock:
            self.syncs += 1
            for action in self.state.plan():
                if isinstance(action, Deregister):
                    method, body = "Catalog.Deregister", action.request.to_wire()
                else:
                    method, body = "Catalog.Register", action.request.to_wire()
                try:
                    await self._call(method, body)
                except RemoteError as exc:
                    if _permission_denied(exc.error):
                        self._log.throttled(
                            WARN,
                            "agent:sync-denied",
                            f"agent: {action.description} blocked by ACLs",
                        )
                        self.state.done(action)
                        continue
                    return self._sync_failed(exc.error)
                except RPCCallError as exc:
                    return self._sync_failed(str(exc))
                self.state.done(action)
                self._log.info(f"agent: {clip(action.description)}")
            self.last_sync_error = ""
            return ""

    def _sync_failed(self, text: str) -> str:
        self.last_sync_error = text
        self._log.throttled(
            ERR, "agent:sync-failed", f"agent: failed to sync changes: {clip(text)}"
        )
        return text


def _remote_state(services_reply: Any, checks_reply: Any) -> RemoteState:
    node: Node | None = None
    services: dict[str, NodeService] = {}
    found = services_reply.get("NodeServices") if isinstance(services_reply, dict) else None
    if isinstance(found, dict):
        node = Node.from_wire(found.get("Node"))
        for service_id, service in (found.get("Services") or {}).items():
            services[str(service_id)] = NodeService.from_wire(service)
    checks: list[HealthCheck] = []
    if isinstance(checks_reply, dict):
        checks = [HealthCheck.from_wire(c) for c in checks_reply.get("HealthChecks") or ()]
    return RemoteState(node, services, checks)


__all__ += ["DefinitionError"]
