"""The leader's duties as pure decisions (``consul/leader.go``, ``session_ttl.go``,
``state/tombstone_gc.go``); :mod:`agentrpc.catalog.duties` runs them as Trio tasks.

- :class:`SessionTimers`: each session with a TTL expires TTL x 2 after its last renewal;
  :meth:`SessionTimers.expire` names the sessions to destroy.
- :class:`TombstoneGC`: a hint per new tombstone, bucketed to the granularity (Go's
  ``Time.Round``); a bucket expires TTL later and yields the highest index to reap.
- :func:`reconcile_member` / :func:`reconcile_reaped`: the catalog writes that bring the
  catalog in line with serf's LAN membership (a node per member with the ``serfHealth`` check
  passing or critical, the ``consul`` service for servers, deregistration on leave and reap),
  skipping the write when the catalog already agrees. Raft membership changes for servers are
  reported as :class:`ServerJoin` / :class:`ServerLeave` for the consensus layer to act on.

Times are seconds on the caller's clock; nothing here reads a clock.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..hostport import join_host_port
from ..member_status import STATUS_ALIVE, STATUS_FAILED, STATUS_LEFT
from ..protocol.bodies import Member
from .constants import (
    CONSUL_SERVICE_ID,
    CONSUL_SERVICE_NAME,
    HEALTH_ANY,
    HEALTH_CRITICAL,
    HEALTH_PASSING,
    SERF_CHECK_ALIVE_OUTPUT,
    SERF_CHECK_FAILED_OUTPUT,
    SERF_CHECK_ID,
    SERF_CHECK_NAME,
    SESSION_TTL_MULTIPLIER,
    TOMBSTONE_GRANULARITY_S,
    TOMBSTONE_TTL_S,
)
from .state_store import StateStore
from .structs import DeregisterRequest, HealthCheck, Node, NodeService, RegisterRequest

__all__ = [
    "STATUS_REAP",
    "CatalogWrite",
    "ServerJoin",
    "ServerLeave",
    "SessionTimers",
    "TombstoneGC",
    "consul_server_port",
    "raft_server_id",
    "reconcile_member",
    "reconcile_reaped",
]

STATUS_REAP: Final = "reap"
"""Consul's ``StatusReap``: a member serf reaped after a long failure."""
SERVER_ROLE: Final = "consul"
NODE_ROLE: Final = "node"


# ------------------------------------------------------------------ session TTL timers


class SessionTimers:
    """The leader's session expirations: ``reset`` on create, renew and on winning
    leadership; ``clear`` on destroy; ``expire`` pops what is due."""

    __slots__ = ("_deadlines", "_heap")

    def __init__(self) -> None:
        self._deadlines: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._deadlines)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._deadlines

    def deadline(self, session_id: str) -> float | None:
        return self._deadlines.get(session_id)

    def reset(self, session_id: str, ttl_ns: int, now: float) -> float:
        """(Re)arm the timer: TTL x 2 from ``now``; returns the deadline."""
        deadline = now + ttl_ns * SESSION_TTL_MULTIPLIER / 1e9
        self._deadlines[session_id] = deadline
        heapq.heappush(self._heap, (deadline, session_id))
        if len(self._heap) > 2 * len(self._deadlines) + 64:
            self._heap = [(d, s) for s, d in self._deadlines.items()]
            heapq.heapify(self._heap)
        return deadline

    def clear(self, session_id: str) -> None:
        self._deadlines.pop(session_id, None)

    def clear_all(self) -> None:
        self._deadlines.clear()
        self._heap.clear()

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and self._deadlines.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def expire(self, now: float) -> list[str]:
        """The sessions whose timer ran out at ``now`` (forgotten here)."""
        due = []
        while (deadline := self.next_deadline()) is not None and deadline <= now:
            _, session_id = heapq.heappop(self._heap)
            del self._deadlines[session_id]
            due.append(session_id)
        return due


# ------------------------------------------------------------------ tombstone GC


class TombstoneGC:
    """``TombstoneGC``: only the leader's is enabled; hints are bucketed by expiry time."""

    __slots__ = ("_buckets", "enabled", "granularity", "ttl")

    def __init__(
        self, ttl: float = TOMBSTONE_TTL_S, granularity: float = TOMBSTONE_GRANULARITY_S
    ) -> None:
        if ttl <= 0 or granularity <= 0:
            raise ValueError("tombstone TTL and granularity must be positive")
        self.ttl = ttl
        self.granularity = granularity
        self.enabled = False
        self._buckets: dict[float, int] = {}

    def set_enabled(self, enabled: bool) -> None:
        """Disabling forgets every pending expiry (a new leader starts its own clock)."""
        self.enabled = enabled
        if not enabled:
            self._buckets.clear()

    def pending(self) -> int:
        return len(self._buckets)

    def hint(self, index: int, now: float) -> None:
        """A tombstone was written at ``index``: reap up to it one TTL from now."""
        if not self.enabled or index <= 0:
            return
        expires = math.floor((now + self.ttl) / self.granularity + 0.5) * self.granularity
        if self._buckets.get(expires, 0) < index:
            self._buckets[expires] = index

    def next_deadline(self) -> float | None:
        return min(self._buckets) if self._buckets else None

    def expire(self, now: float) -> list[int]:
        """The reap indexes of the buckets due at ``now``, oldest first."""
        due = sorted(t for t in self._buckets if t <= now)
        return [self._buckets.pop(t) for t in due]


# ------------------------------------------------------------------ serf reconciliation


@dataclass(frozen=True, slots=True)
class CatalogWrite:
    """A write for the leader to apply (already normalized as ``Catalog.Register`` /
    ``Catalog.Deregister`` would have it)."""

    request: RegisterRequest | DeregisterRequest
    reason: str


@dataclass(frozen=True, slots=True)
class ServerJoin:
    """A live server the consensus layer should have as a peer (``joinConsulServer``).

    ``id``: its Raft server ID (the ``id`` tag of a server speaking Raft protocol 3), "" when
    the address is the ID (older protocols). ``bootstrap``: it runs in bootstrap mode (the
    ``bootstrap`` tag), which a leader in bootstrap mode refuses to add."""

    name: str
    address: str
    id: str = ""
    bootstrap: bool = False

    @property
    def raft_id(self) -> str:
        return self.id or self.address


@dataclass(frozen=True, slots=True)
class ServerLeave:
    """A server gone from serf that the consensus layer should drop (``removeConsulServer``)."""

    name: str
    address: str
    id: str = ""

    @property
    def raft_id(self) -> str:
        return self.id or self.address


Decision = CatalogWrite | ServerJoin | ServerLeave


def _optional_int(tags: Mapping[str, str], name: str) -> bool:
    value = tags.get(name)
    return value is None or _is_int(value)


def _is_int(text: str) -> bool:
    body = text[1:] if text[:1] in ("+", "-") else text
    return body.isascii() and body.isdigit()


def consul_server_port(member: Member) -> int | None:
    """``IsConsulServer``: the server port of a member tagged as a Consul server (role,
    dc, port and vsn required; expect, raft_vsn and wan_join_port must parse when present),
    else None."""
    tags = member.tags
    if tags.get("role") != SERVER_ROLE or "dc" not in tags:
        return None
    port = tags.get("port", "")
    if not _is_int(port) or not _is_int(tags.get("vsn", "")):
        return None
    if not all(_optional_int(tags, name) for name in ("expect", "raft_vsn", "wan_join_port")):
        return None
    return int(port)


def raft_server_id(member: Member) -> str:
    """The Raft server ID a server advertises: its ``id`` tag when it speaks Raft protocol 3
    (``raft_vsn`` >= 3), else "" (the server's address is its ID, as in protocol 2)."""
    tags = member.tags
    version = tags.get("raft_vsn", "0")
    if _is_int(version) and int(version) >= 3:
        return tags.get("id", "")
    return ""


def _member_dc(member: Member) -> str | None:
    tags = member.tags
    if tags.get("role") == NODE_ROLE:
        return tags.get("dc")
    if consul_server_port(member) is not None:
        return tags.get("dc")
    return None


def _serf_check(node: str, status: str, output: str) -> HealthCheck:
    return HealthCheck(
        node=node,
        check_id=SERF_CHECK_ID,
        name=SERF_CHECK_NAME,
        status=status,
        output=output,
    )


def _serf_status(store: StateStore, node: str) -> str | None:
    _, checks = store.node_checks(node)
    for check in checks:
        if check.check_id == SERF_CHECK_ID:
            return check.status
    return None


def reconcile_member(
    store: StateStore,
    member: Member,
    *,
    datacenter: str,
    local_node: str,
    token: str = "",
) -> list[Decision]:
    """What the leader does for one serf member (``reconcileMember``); ``member.status`` is
    serf's, or :data:`STATUS_REAP`."""
    if _member_dc(member) != datacenter:
        return []
    status = member.status
    if status == STATUS_ALIVE:
        return _alive(store, member, datacenter, local_node, token)
    if status == STATUS_FAILED:
        return _failed(store, member, datacenter, token)
    if status in (STATUS_LEFT, STATUS_REAP):
        return _deregister(store, member, datacenter, local_node, token, status)
    return []


def _alive(
    store: StateStore, member: Member, datacenter: str, local_node: str, token: str
) -> list[Decision]:
    decisions: list[Decision] = []
    address = str(member.addr)
    port = consul_server_port(member)
    service = None
    if port is not None:
        service = NodeService(id=CONSUL_SERVICE_ID, service=CONSUL_SERVICE_NAME, port=port)
        if member.name != local_node:
            decisions.append(
                ServerJoin(
                    member.name,
                    join_host_port(address, port),
                    raft_server_id(member),
                    "bootstrap" in member.tags,
                )
            )
    _, node = store.get_node(member.name)
    if node is not None and node.address == address:
        present = True
        if service is not None:
            _, found = store.node_services(member.name)
            present = found is not None and CONSUL_SERVICE_ID in found[1]
        if present and _serf_status(store, member.name) == HEALTH_PASSING:
            return decisions
    request = RegisterRequest(
        datacenter=datacenter,
        node=member.name,
        address=address,
        service=service,
        checks=[_serf_check(member.name, HEALTH_PASSING, SERF_CHECK_ALIVE_OUTPUT)],
        token=token,
        **_kept_node_fields(member, node),
    )
    decisions.append(CatalogWrite(request, f"member '{member.name}' joined, marking health alive"))
    return decisions


def _kept_node_fields(member: Member, node: Node | None) -> dict[str, Any]:
    """What a reconcile's register carries besides the member's address: the node ID from the
    member's ``id`` tag (Consul 0.8), and the node's tagged addresses and metadata as the
    catalog has them (0.8 copies them on an alive member; ours on a failed one too), so that
    the register, which rebuilds the node, does not wipe what the agent synced."""
    tag = member.tags.get("id", "")
    fields: dict[str, Any] = {"id": tag if _is_uuid(tag) else ""}
    if node is not None:
        fields["tagged_addresses"] = node.tagged_addresses
        fields["node_meta"] = node.meta
        if not fields["id"]:
            fields["id"] = node.id
    return fields


def _is_uuid(text: str) -> bool:
    """A node ID the catalog takes (a plain serf peer's ``id`` tag may be anything)."""
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) == 36


def _failed(store: StateStore, member: Member, datacenter: str, token: str) -> list[Decision]:
    address = str(member.addr)
    _, node = store.get_node(member.name)
    if (
        node is not None
        and node.address == address
        and _serf_status(store, member.name) == HEALTH_CRITICAL
    ):
        return []
    request = RegisterRequest(
        datacenter=datacenter,
        node=member.name,
        address=address,
        **_kept_node_fields(member, node),
        checks=[_serf_check(member.name, HEALTH_CRITICAL, SERF_CHECK_FAILED_OUTPUT)],
        token=token,
    )
    return [CatalogWrite(request, f"member '{member.name}' failed, marking health critical")]


def _deregister(
    store: StateStore,
    member: Member,
    datacenter: str,
    local_node: str,
    token: str,
    status: str,
) -> list[Decision]:
    if member.name == local_node:
        return []  # a follower deregisters a leaving leader, never itself
    decisions: list[Decision] = []
    port = consul_server_port(member)
    if port is not None:
        decisions.append(
            ServerLeave(member.name, join_host_port(str(member.addr), port), raft_server_id(member))
        )
    _, node = store.get_node(member.name)
    if node is None:
        return decisions
    reason = "left" if status == STATUS_LEFT else "reaped"
    request = DeregisterRequest(datacenter=datacenter, node=member.name, token=token)
    decisions.append(CatalogWrite(request, f"member '{member.name}' {reason}, deregistering"))
    return decisions


def reconcile_reaped(
    store: StateStore,
    known: Iterable[str],
    *,
    datacenter: str,
    local_node: str,
    token: str = "",
) -> list[Decision]:
    """``reconcileReaped``: catalog nodes with a ``serfHealth`` check that serf no longer
    knows are reaped (a server's through its ``consul`` service port)."""
    members = set(known)
    decisions: list[Decision] = []
    _, checks = store.checks_in_state(HEALTH_ANY)
    for check in checks:
        if check.check_id != SERF_CHECK_ID or check.node in members:
            continue
        tags = {"dc": datacenter, "role": NODE_ROLE}
        _, found = store.node_services(check.node)
        _, node = store.get_node(check.node)
        if found is not None:
            consul = found[1].get(CONSUL_SERVICE_ID)
            if consul is not None and consul.port > 0:
                tags.update(role=SERVER_ROLE, port=str(consul.port), vsn="2")
        address = node.address if node is not None else "0.0.0.0"
        fake = _fake_member(check.node, address, tags)
        decisions.extend(
            reconcile_member(
                store,
                fake,
                datacenter=datacenter,
                local_node=local_node,
                token=token,
            )
        )
    return decisions


def _fake_member(name: str, address: str, tags: dict[str, str]) -> Member:
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        addr = ipaddress.ip_address("0.0.0.0")
    return Member(name=name, addr=addr, port=0, tags=tags, status=STATUS_REAP)
