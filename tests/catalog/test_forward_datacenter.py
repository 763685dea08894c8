"""Requests for another datacenter go to a server of it found through WAN gossip; one that
fails rotates to the back, and the call moves on when that is safe (nothing sent, or not a
write that must not run twice); with no live server there it is ``No path to datacenter``."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pytest

from agentrpc.catalog.raft_consensus import ServerForwarder
from agentrpc.protocol.bodies import Member
from agentrpc.serverport.endpoints import ConnectFailed, EndpointError, RPCCallError


def wan_member(name: str, host: str, dc: str, status: str = "alive") -> Member:
    tags = {"role": "consul", "dc": dc, "port": "8300", "vsn": "2"}
    return Member(f"{name}.{dc}", ipaddress.ip_address(host), 8302, tags, status)


class FakePool:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.dead: set[str] = set()
        self.lost: set[str] = set()

    async def call(self, address: str, method: str, body: Any, *, max_time: float) -> Any:
        self.calls.append(address)
        if address in self.dead:
            raise ConnectFailed(f"failed to connect to {address}")
        if address in self.lost:
            raise RPCCallError(f"connection to {address} lost")
        return f"answered by {address}"


def forwarder(pool: FakePool, members: list[Member]) -> ServerForwarder:
    facts: Any = None  # not used for other datacenters
    fake: Any = pool
    return ServerForwarder(
        lambda: fake, facts, datacenter="dc1", wan_members=lambda: members, rng=random.Random(4)
    )


WAN = [wan_member(f"s{i}", f"10.0.2.{i}", "dc2") for i in (1, 2, 3)] + [
    wan_member("s9", "10.0.1.9", "dc1")
]


async def test_a_dead_server_rotates_to_the_back_and_the_call_moves_on() -> None:
    pool = FakePool()
    fwd = forwarder(pool, WAN)
    first = await fwd.forward_datacenter("dc2", "KVS.Get", {})
    front = pool.calls[0]
    assert first == f"answered by {front}" and front.startswith("10.0.2.")
    pool.dead.add(front)
    pool.calls.clear()
    # Even a write moves on: the connection could not be set up, so nothing was sent.
    answer = await fwd.forward_datacenter("dc2", "KVS.Apply", {})
    assert pool.calls[0] == front and len(pool.calls) == 2
    assert answer == f"answered by {pool.calls[1]}"
    pool.calls.clear()
    await fwd.forward_datacenter("dc2", "KVS.Get", {})
    assert pool.calls[0] != front  # the dead one is at the back now: not tried first


async def test_a_write_lost_in_flight_is_not_sent_twice_but_a_read_is_retried() -> None:
    pool = FakePool()
    fwd = forwarder(pool, WAN)
    await fwd.forward_datacenter("dc2", "Status.Ping", {})
    front = pool.calls[0]
    pool.lost.add(front)
    pool.calls.clear()
    with pytest.raises(EndpointError, match="lost"):
        await fwd.forward_datacenter("dc2", "KVS.Apply", {})
    assert pool.calls == [front]
    pool.lost = {a for a in ("10.0.2.1:8300", "10.0.2.2:8300", "10.0.2.3:8300")}
    pool.calls.clear()
    with pytest.raises(EndpointError, match="lost"):
        await fwd.forward_datacenter("dc2", "Catalog.ListNodes", {})
    assert sorted(pool.calls) == sorted(pool.lost)  # each server once, then the error


async def test_no_live_server_there_is_no_path() -> None:
    pool = FakePool()
    members = [wan_member("s1", "10.0.2.1", "dc2", status="failed")]
    fwd = forwarder(pool, members)
    with pytest.raises(EndpointError, match=r"^No path to datacenter$"):
        await fwd.forward_datacenter("dc2", "KVS.Get", {})
    with pytest.raises(EndpointError, match=r"^No path to datacenter$"):
        await fwd.forward_datacenter("dc7", "KVS.Get", {})
    assert pool.calls == [] and fwd._routes == {}
