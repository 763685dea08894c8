"""A serf member becomes an agent RPC Member; an impossible address is an error, not 0.0.0.0."""

from __future__ import annotations

import ipaddress

import pytest

from agentrpc.gossip.serf import SerfMember
from agentrpc.member_status import MemberStatus
from agentrpc.membership import member_of


def _serf_member(addr: bytes) -> SerfMember:
    return SerfMember(
        name="node2",
        addr=addr,
        port=8301,
        tags={"role": "node"},
        status=MemberStatus.ALIVE,
        vsn=(1, 5, 4, 2, 5, 4),
        status_ltime=3,
        leave_time=None,
    )


def test_a_member_keeps_its_address_and_versions() -> None:
    member = member_of(_serf_member(bytes([10, 0, 0, 2])))
    assert member.addr == ipaddress.ip_address("10.0.0.2")
    assert member.status == "alive"
    assert (member.protocol_min, member.protocol_max, member.protocol_cur) == (1, 5, 4)
    v6 = member_of(_serf_member(ipaddress.ip_address("fe80::1").packed))
    assert v6.addr == ipaddress.ip_address("fe80::1")


@pytest.mark.parametrize("addr", [b"", b"\x01\x02\x03", bytes(5)])
def test_an_address_memberlist_never_admits_raises(addr: bytes) -> None:
    with pytest.raises(ValueError, match=f"node2.*{len(addr)} bytes"):
        member_of(_serf_member(addr))
