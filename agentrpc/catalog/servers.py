"""The servers of a datacenter as Raft sees them, pure: who they are (from serf tags), when a
new cluster bootstraps (``bootstrap_expect``), what a leader changes in the Raft configuration
when a server joins or leaves serf, and which dead servers it may prune (Consul's ``leader.go``
``joinConsulServer`` / ``removeConsulServer``, ``server.go`` ``maybeBootstrap``, autopilot's
``pruneDeadServers``).

Every function takes what it needs (members, the Raft configuration, the local config) and
returns a decision; :mod:`agentrpc.server_raft` carries decisions out. Nothing here reads a
clock or does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from ..hostport import join_host_port
from ..member_status import STATUS_ALIVE, STATUS_FAILED
from ..protocol.bodies import Member
from ..raft.configuration import Configuration, Server, Suffrage
from .leader import ServerJoin, ServerLeave, consul_server_port, raft_server_id

__all__ = [
    "AddVoter",
    "BootstrapPlan",
    "RemoveServer",
    "ServerInfo",
    "bootstrap_plan",
    "dead_servers",
    "join_changes",
    "leave_changes",
    "parse_server",
]

RAFT_PROTOCOL: Final = 3
"""The Raft protocol version our servers speak and advertise (``raft_vsn``)."""


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """A serf member that is a Consul server (``IsConsulServer`` parsed its tags)."""

    name: str
    datacenter: str
    address: str
    """The server port, ``ip:port`` (``[ip]:port`` for IPv6): also its Raft address."""
    raft_id: str
    """Its Raft server ID: the ``id`` tag under Raft protocol 3, else its address."""
    expect: int
    """Its ``expect`` tag (``bootstrap_expect``), 0 when absent."""
    bootstrap: bool
    status: str


def parse_server(member: Member) -> ServerInfo | None:
    """The server a member is, or None (not a server, or tags that do not parse)."""
    port = consul_server_port(member)
    if port is None:
        return None
    address = join_host_port(str(member.addr), port)
    expect = member.tags.get("expect", "")
    return ServerInfo(
        name=member.name,
        datacenter=member.tags["dc"],
        address=address,
        raft_id=raft_server_id(member) or address,
        expect=int(expect) if expect else 0,
        bootstrap="bootstrap" in member.tags,
        status=member.status,
    )


# ------------------------------------------------------------------ bootstrap_expect


@dataclass(frozen=True, slots=True)
class BootstrapPlan:
    """What ``maybeBootstrap`` decides: ``servers`` to bootstrap with (in name order, so every
    server of the set builds the same configuration), or None with ``reason`` (waiting for
    more, or disabled) and ``disable`` when expect mode must stop for good."""

    servers: tuple[ServerInfo, ...] | None
    reason: str = ""
    disable: bool = False


def bootstrap_plan(members: Iterable[Member], *, datacenter: str, expect: int) -> BootstrapPlan:
    """Decide whether ``expect`` servers of ``datacenter`` are here to bootstrap a cluster.

    As Consul: only live servers of our datacenter count; one in bootstrap mode disables expect
    mode, one with a different ``expect`` is an error (and no bootstrap), fewer than ``expect``
    means wait. The caller still has to check that none of them has Raft peers already (a
    cluster that exists must be joined, not bootstrapped anew)."""
    servers: list[ServerInfo] = []
    for member in members:
        info = parse_server(member)
        if info is None or info.datacenter != datacenter or info.status != STATUS_ALIVE:
            continue
        if info.bootstrap:
            return BootstrapPlan(
                None, f"Member {info.name} has bootstrap mode. Expect disabled.", disable=True
            )
        if info.expect != expect:
            return BootstrapPlan(
                None,
                f"Member {info.name} has a conflicting expect value. "
                "All nodes should expect the same number.",
            )
        servers.append(info)
    if len(servers) < expect:
        return BootstrapPlan(None, f"{len(servers)} of {expect} expected servers present")
    servers.sort(key=lambda info: info.name)
    return BootstrapPlan(tuple(servers))


def bootstrap_configuration(servers: Iterable[ServerInfo]) -> Configuration:
    """The configuration every expected server bootstraps with (all voters)."""
    return Configuration.of(Server(info.raft_id, info.address) for info in servers)


# ------------------------------------------------------------------ voters


@dataclass(frozen=True, slots=True)
class AddVoter:
    id: str
    address: str


@dataclass(frozen=True, slots=True)
class RemoveServer:
    id: str
    reason: str


Change = AddVoter | RemoveServer


def join_changes(
    configuration: Configuration,
    join: ServerJoin,
    *,
    local_bootstrap: bool,
    bootstrap_members: Iterable[str] = (),
) -> tuple[list[Change], str]:
    """What a leader does when a server is alive in serf (``joinConsulServer``): nothing when
    the configuration already has it with that address; first remove a stale entry that has
    its address under another ID (or its ID under another address); then add it as a voter.

    Refused (no change, and the returned text says why) when two servers would be in
    bootstrap mode: this one (``local_bootstrap``) and the joining one, or another member
    (``bootstrap_members``: names of the others in bootstrap mode)."""
    if join.bootstrap and local_bootstrap:
        return [], (
            f"Two nodes are in bootstrap mode. Only one node should be in bootstrap mode, "
            f"not adding Raft peer {join.name}."
        )
    others = [name for name in bootstrap_members if name != join.name]
    if join.bootstrap and others:
        return [], (
            f"Two nodes are in bootstrap mode. Only one node should be in bootstrap mode, "
            f"not adding Raft peer {join.name}."
        )
    raft_id = join.raft_id
    changes: list[Change] = []
    for server in configuration.servers:
        if server.id == raft_id and server.address == join.address:
            return [], ""
        if server.address == join.address or server.id == raft_id:
            changes.append(
                RemoveServer(server.id, f"{join.name} rejoined as {raft_id} at {join.address}")
            )
    changes.append(AddVoter(raft_id, join.address))
    return changes, ""


def leave_changes(
    configuration: Configuration, leave: ServerLeave, *, local_id: str
) -> list[Change]:
    """``removeConsulServer``: drop the server that left (never this one: a leader that
    leaves hands leadership over first and is removed by the next leader)."""
    raft_id = leave.raft_id
    if raft_id == local_id:
        return []
    for server in configuration.servers:
        if server.id == raft_id or server.address == leave.address:
            return [RemoveServer(server.id, f"{leave.name} left")]
    return []


def dead_servers(
    configuration: Configuration, members: Iterable[Member], *, datacenter: str, local_id: str
) -> list[RemoveServer]:
    """Autopilot's dead-server cleanup: the servers of the configuration whose serf member is
    failed, removed only while they are fewer than half the voters, rounded down (Consul's
    ``removalCount < peers/2``): with 3 voters a failed one stays, with 5 one may go."""
    failed: dict[str, str] = {}
    for member in members:
        info = parse_server(member)
        if info is not None and info.datacenter == datacenter and info.status == STATUS_FAILED:
            failed[info.raft_id] = info.name
            failed.setdefault(info.address, info.name)
    voters = [server for server in configuration.servers if server.suffrage == Suffrage.VOTER]
    gone = [
        server
        for server in configuration.servers
        if server.id != local_id and (server.id in failed or server.address in failed)
    ]
    if not gone or len(gone) >= len(voters) // 2:
        return []
    return [
        RemoveServer(
            server.id,
            f"autopilot: removing dead server {failed.get(server.id) or failed[server.address]}",
        )
        for server in gone
    ]
