"""An agent's local services and checks and what is in sync with the catalog, sans-I/O
(Consul 0.7's ``command/agent/local.go``).

:class:`LocalState` keeps the services and checks registered on this agent, each with an
"in sync" flag. :meth:`LocalState.set_sync_state` compares them with what the catalog holds
for this node (a full sync marks every difference); :meth:`LocalState.plan` lists the catalog
writes that would bring the catalog in line (services first, each with its unsynced checks,
then checks, then the node's own record), and :meth:`LocalState.done` marks a write's entries in
sync, but only those unchanged since the plan (a change made while the write was under way
keeps its entry out of sync for the next round).

Output-only changes of a check are deferred by ``check_update_interval`` (half of it plus up to
all of it as stagger, which the caller draws), as the reference does against spammy checks; a
status change is synced at once. Time and randomness come in as arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Final

from ..catalog.constants import (
    CONSUL_SERVICE_ID,
    HEALTH_CRITICAL,
    NODE_MAINTENANCE_CHECK_ID,
    SERF_CHECK_ID,
    SERVICE_MAINTENANCE_PREFIX,
)
from ..catalog.structs import DeregisterRequest, HealthCheck, Node, NodeService, RegisterRequest

__all__ = [
    "AE_SCALE_THRESHOLD",
    "Deregister",
    "LocalState",
    "Register",
    "RemoteState",
    "SyncAction",
    "ae_scale",
]

AE_SCALE_THRESHOLD: Final = 128
"""``aeScaleThreshold``: above this many LAN members the anti-entropy intervals grow."""
NODE_MAINTENANCE_NAME: Final = "Node Maintenance Mode"
SERVICE_MAINTENANCE_NAME: Final = "Service Maintenance Mode"
DEFAULT_NODE_MAINTENANCE_REASON: Final = (
    "Maintenance mode is enabled for this node, but no reason was provided. This is a default "
    "message."
)
DEFAULT_SERVICE_MAINTENANCE_REASON: Final = (
    "Maintenance mode is enabled for this service, but no reason was provided. This is a "
    "default message."
)
CHECK_OUTPUT_LIMIT: Final = 4096
"""``CheckBufSize``: output kept of a check (longer output is cut, with a note)."""


def ae_scale(interval: float, members: int) -> float:
    """``aeScale``: ``interval`` up to 128 members, then one more ``interval`` for each
    doubling (``ceil(log2(n) - log2(128)) + 1`` times)."""
    if members <= AE_SCALE_THRESHOLD:
        return interval
    multiplier = math.ceil(math.log2(members) - math.log2(AE_SCALE_THRESHOLD)) + 1.0
    return multiplier * interval


def clip_output(output: str, limit: int = CHECK_OUTPUT_LIMIT) -> str:
    """A check's output bounded as the reference bounds TTL updates."""
    if len(output) <= limit:
        return output
    return f"{output[:limit]} ... (captured {limit} of {len(output)} bytes)"


@dataclass(frozen=True, slots=True)
class RemoteState:
    """What the catalog holds for this node (``Catalog.NodeServices``, ``Health.NodeChecks``)."""

    node: Node | None
    services: dict[str, NodeService]
    checks: list[HealthCheck]


@dataclass(frozen=True, slots=True)
class Register:
    """A ``Catalog.Register`` that syncs the named entries (and the node record)."""

    request: RegisterRequest
    services: tuple[tuple[str, int], ...] = ()
    """(service ID, generation planned)."""
    checks: tuple[tuple[str, int], ...] = ()
    description: str = ""


@dataclass(frozen=True, slots=True)
class Deregister:
    """A ``Catalog.Deregister`` of a service or check this agent no longer has."""

    request: DeregisterRequest
    service_id: str = ""
    check_id: str = ""
    description: str = ""


SyncAction = Register | Deregister


@dataclass(slots=True)
class _Entry:
    in_sync: bool = False
    generation: int = 0


class LocalState:
    """The services and checks of one agent and their sync status."""

    def __init__(
        self,
        node_name: str,
        *,
        datacenter: str = "",
        address: str = "",
        tagged_addresses: dict[str, str] | None = None,
        node_id: str = "",
        node_meta: dict[str, str] | None = None,
        token: str = "",
        check_update_interval: float = 300.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.node_name = node_name
        self.datacenter = datacenter
        self.address = address
        self.tagged_addresses = tagged_addresses
        self.node_id = node_id
        """Consul 0.8's node ID ("" for none), registered with the node."""
        self.node_meta = dict(node_meta or {})
        """The node's metadata, registered as a map (``{}`` when empty, as Consul 0.8 sends)."""
        self.token = token
        """The agent's own token for its catalog writes (the default when none was given)."""
        self.check_update_interval = check_update_interval
        self._on_change = on_change
        self.services: dict[str, NodeService] = {}
        self.service_tokens: dict[str, str] = {}
        self.checks: dict[str, HealthCheck] = {}
        self.check_tokens: dict[str, str] = {}
        self._service_status: dict[str, _Entry] = {}
        self._check_status: dict[str, _Entry] = {}
        self._deferred: dict[str, float] = {}
        self.critical_since: dict[str, float] = {}
        self.node_in_sync = False
        self.paused = 0
        self._generation = 0

    # ------------------------------------------------------------------ changes

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def _mark(self, table: dict[str, _Entry], key: str) -> None:
        self._generation += 1
        entry = table.setdefault(key, _Entry())
        entry.in_sync = False
        entry.generation = self._generation

    def set_address(self, address: str, tagged_addresses: dict[str, str] | None) -> None:
        """The node's address as registered (a reload or a late bind may change it)."""
        if address != self.address or tagged_addresses != self.tagged_addresses:
            self.address = address
            self.tagged_addresses = tagged_addresses
            self.node_in_sync = False
            self._changed()

    def add_service(self, service: NodeService, token: str = "") -> None:
        """Add or replace a service (``AddService``; the ID defaults to the name)."""
        if not service.id and service.service:
            service = replace(service, id=service.service)
        self.services[service.id] = service
        self.service_tokens[service.id] = token
        self._mark(self._service_status, service.id)
        self._changed()

    def remove_service(self, service_id: str) -> list[str]:
        """Remove a service and its checks; the IDs of the checks removed."""
        self.services.pop(service_id, None)
        self.service_tokens.pop(service_id, None)
        self._mark(self._service_status, service_id)
        removed = [cid for cid, check in self.checks.items() if check.service_id == service_id]
        for check_id in removed:
            self.remove_check(check_id)
        self._changed()
        return removed

    def add_check(self, check: HealthCheck, token: str = "") -> None:
        """Add or replace a check (its node is this agent; its service name filled in)."""
        service_name = check.service_name
        if check.service_id and check.service_id in self.services:
            service_name = self.services[check.service_id].service
        check = replace(
            check,
            node=self.node_name,
            service_name=service_name,
            output=clip_output(check.output),
        )
        self.checks[check.check_id] = check
        self.check_tokens[check.check_id] = token
        self._deferred.pop(check.check_id, None)
        self._mark(self._check_status, check.check_id)
        self._changed()

    def remove_check(self, check_id: str) -> None:
        self.checks.pop(check_id, None)
        self.check_tokens.pop(check_id, None)
        self._deferred.pop(check_id, None)
        self.critical_since.pop(check_id, None)
        self._mark(self._check_status, check_id)
        self._changed()

    def update_check(
        self, check_id: str, status: str, output: str, now: float, stagger: float
    ) -> bool:
        """``UpdateCheck``: a new status is synced at once; new output alone waits for the
        deferral (``check_update_interval / 2 + stagger * check_update_interval`` seconds).
        Whether anything changed."""
        check = self.checks.get(check_id)
        if check is None:
            return False
        output = clip_output(output)
        if status == HEALTH_CRITICAL:
            self.critical_since.setdefault(check_id, now)
        else:
            self.critical_since.pop(check_id, None)
        if check.status == status and check.output == output:
            return False
        interval = self.check_update_interval
        if interval > 0 and check.status == status:
            self.checks[check_id] = replace(check, output=output)
            if check_id not in self._deferred:
                self._deferred[check_id] = now + interval / 2 + stagger * interval
            return True
        self.checks[check_id] = replace(check, status=status, output=output)
        self._mark(self._check_status, check_id)
        self._changed()
        return True

    def next_deferral(self) -> float | None:
        """When the earliest deferred output write is due (None: none pending)."""
        return min(self._deferred.values(), default=None)

    def fire_deferrals(self, now: float) -> int:
        """Mark the checks whose deferral is due out of sync; how many."""
        due = [cid for cid, when in self._deferred.items() if when <= now]
        for check_id in due:
            del self._deferred[check_id]
            if check_id in self._check_status:
                self._mark(self._check_status, check_id)
        if due:
            self._changed()
        return len(due)

    # ------------------------------------------------------------------ maintenance

    def enable_node_maintenance(self, reason: str, token: str = "") -> None:
        if NODE_MAINTENANCE_CHECK_ID in self.checks:
            return
        self.add_check(
            HealthCheck(
                node=self.node_name,
                check_id=NODE_MAINTENANCE_CHECK_ID,
                name=NODE_MAINTENANCE_NAME,
                notes=reason or DEFAULT_NODE_MAINTENANCE_REASON,
                status=HEALTH_CRITICAL,
            ),
            token,
        )

    def disable_node_maintenance(self) -> None:
        if NODE_MAINTENANCE_CHECK_ID in self.checks:
            self.remove_check(NODE_MAINTENANCE_CHECK_ID)

    def enable_service_maintenance(self, service_id: str, reason: str, token: str = "") -> None:
        """Raises ``KeyError`` with the reference's text for an unknown service."""
        service = self.services.get(service_id)
        if service is None:
            raise KeyError(f'No service registered with ID "{service_id}"')
        check_id = SERVICE_MAINTENANCE_PREFIX + service_id
        if check_id in self.checks:
            return
        self.add_check(
            HealthCheck(
                node=self.node_name,
                check_id=check_id,
                name=SERVICE_MAINTENANCE_NAME,
                notes=reason or DEFAULT_SERVICE_MAINTENANCE_REASON,
                service_id=service_id,
                service_name=service.service,
                status=HEALTH_CRITICAL,
            ),
            token,
        )

    def disable_service_maintenance(self, service_id: str) -> None:
        if service_id not in self.services:
            raise KeyError(f'No service registered with ID "{service_id}"')
        check_id = SERVICE_MAINTENANCE_PREFIX + service_id
        if check_id in self.checks:
            self.remove_check(check_id)

    # ------------------------------------------------------------------ sync

    def set_sync_state(self, remote: RemoteState) -> None:
        """``setSyncState``: mark every difference between this agent and the catalog."""
        node = remote.node
        self.node_in_sync = (
            node is not None
            and node.address == self.address
            and (node.tagged_addresses or None) == (self.tagged_addresses or None)
            and node.id == self.node_id
            and (node.meta or {}) == self.node_meta
        )
        for service_id in remote.services:
            if service_id not in self.services and service_id != CONSUL_SERVICE_ID:
                self._mark(self._service_status, service_id)
        for service_id, service in self.services.items():
            existing = remote.services.get(service_id)
            if existing is None:
                self._mark(self._service_status, service_id)
                continue
            if existing.enable_tag_override:
                existing = replace(existing, tags=service.tags)
            if existing.same_as(service):
                self._service_status.setdefault(service_id, _Entry()).in_sync = True
            else:
                self._mark(self._service_status, service_id)
        remote_checks = {check.check_id: check for check in remote.checks}
        for check_id in self.checks:
            if check_id not in remote_checks:
                self._mark(self._check_status, check_id)
        for check_id, remote_check in remote_checks.items():
            local_check = self.checks.get(check_id)
            if local_check is None:
                if check_id != SERF_CHECK_ID:
                    self._mark(self._check_status, check_id)
                continue
            ours, theirs = local_check, remote_check
            if self.check_update_interval > 0 and check_id in self._deferred:
                ours, theirs = replace(ours, output=""), replace(theirs, output="")
            if theirs.same_as(ours):
                self._check_status.setdefault(check_id, _Entry()).in_sync = True
            else:
                self._mark(self._check_status, check_id)

    def in_sync(self) -> bool:
        return (
            self.node_in_sync
            and all(entry.in_sync for entry in self._service_status.values())
            and all(entry.in_sync for entry in self._check_status.values())
        )

    def _register(self, **fields: object) -> RegisterRequest:
        return RegisterRequest(
            datacenter=self.datacenter,
            node=self.node_name,
            address=self.address,
            tagged_addresses=dict(self.tagged_addresses) if self.tagged_addresses else None,
            id=self.node_id,
            node_meta=dict(self.node_meta),
            **fields,  # type: ignore[arg-type]
        )

    def plan(self) -> list[SyncAction]:
        """``syncChanges``' writes, in its order: services (each with its unsynced checks),
        then checks (each with its service), then the node record if no registration carried
        it."""
        actions: list[SyncAction] = []
        planned_checks: set[str] = set()
        for service_id, entry in sorted(self._service_status.items()):
            if entry.in_sync:
                continue
            service = self.services.get(service_id)
            if service is None:
                actions.append(self._deregister(service_id=service_id))
                continue
            checks = [
                check
                for check_id, check in sorted(self.checks.items())
                if check.service_id == service_id
                and not self._check_status.get(check_id, _Entry()).in_sync
            ]
            planned_checks.update(check.check_id for check in checks)
            request = self._register(
                service=service,
                checks=checks or None,
                token=self.service_tokens.get(service_id) or self.token,
            )
            actions.append(
                Register(
                    request,
                    services=((service_id, entry.generation),),
                    checks=tuple(
                        (c.check_id, self._check_status[c.check_id].generation) for c in checks
                    ),
                    description=f"Synced service '{service_id}'",
                )
            )
        for check_id, entry in sorted(self._check_status.items()):
            if entry.in_sync or check_id in planned_checks:
                continue
            check = self.checks.get(check_id)
            if check is None:
                actions.append(self._deregister(check_id=check_id))
                continue
            service = self.services.get(check.service_id) if check.service_id else None
            request = self._register(
                service=service,
                checks=[check],
                token=self.check_tokens.get(check_id) or self.token,
            )
            actions.append(
                Register(
                    request,
                    checks=((check_id, entry.generation),),
                    description=f"Synced check '{check_id}'",
                )
            )
        if not self.node_in_sync and not any(isinstance(a, Register) for a in actions):
            actions.append(
                Register(self._register(token=self.token), description="Synced node info")
            )
        return actions

    def _deregister(self, *, service_id: str = "", check_id: str = "") -> Deregister:
        """The ``Catalog.Deregister`` of one service or (the other argument empty) one check."""
        what = f"service '{service_id}'" if service_id else f"check '{check_id}'"
        request = DeregisterRequest(
            datacenter=self.datacenter,
            node=self.node_name,
            service_id=service_id,
            check_id=check_id,
            token=self.token,
        )
        return Deregister(
            request, service_id=service_id, check_id=check_id, description=f"Deregistered {what}"
        )

    def done(self, action: SyncAction) -> None:
        """A planned write succeeded (or was refused for permission, which the reference
        also treats as done): its entries are in sync unless they changed since."""
        if isinstance(action, Deregister):
            table = self._service_status if action.service_id else self._check_status
            key = action.service_id or action.check_id
            present = self.services if action.service_id else self.checks
            if key not in present:
                table.pop(key, None)
            return
        self._settle(self._service_status, action.services)
        self._settle(self._check_status, action.checks)
        for check_id, _ in action.checks:
            self._deferred.pop(check_id, None)
        self.node_in_sync = True

    @staticmethod
    def _settle(table: dict[str, _Entry], planned: Iterable[tuple[str, int]]) -> None:
        for key, generation in planned:
            entry = table.get(key)
            if entry is not None and entry.generation == generation:
                entry.in_sync = True

    def service_in_sync(self, service_id: str) -> bool:
        entry = self._service_status.get(service_id)
        return entry is not None and entry.in_sync

    def check_in_sync(self, check_id: str) -> bool:
        entry = self._check_status.get(check_id)
        return entry is not None and entry.in_sync
