"""The protocol-version facts (``versions``) and join-address resolution of the network side."""

from __future__ import annotations

import pytest
import trio

from agentrpc.gossip.contract import GossipAddress
from agentrpc.gossip.memberlist import DEFAULT_VSN, MemberlistConfig, MemberlistStats
from agentrpc.gossip.memberlist_net import MemberlistNet
from agentrpc.gossip.messages import Vsn
from agentrpc.gossip.transport import MemoryGossipNetwork
from agentrpc.gossip.versions import (
    accepts_crc,
    announced_port,
    check_vsn,
    sends_nacks,
    understands_tcp_ping,
)
from agentrpc.log_protocol import NullLog


def _vsn(pmax: int) -> Vsn:
    return (1, pmax, 1, 2, 5, 4)


@pytest.mark.parametrize(
    ("pmax", "tcp_ping", "nacks", "crc"),
    [(1, False, False, False), (2, False, False, False), (3, True, False, False),
     (4, True, True, False), (5, True, True, True), (6, True, True, True)],
)  # fmt: skip
def test_what_each_protocol_version_brings(
    pmax: int, tcp_ping: bool, nacks: bool, crc: bool
) -> None:
    assert understands_tcp_ping(_vsn(pmax)) is tcp_ping
    assert sends_nacks(_vsn(pmax)) is nacks
    assert accepts_crc(_vsn(pmax)) is crc


def test_announced_port_is_masked_before_protocol_2_and_for_port_0() -> None:
    assert announced_port(7000, 2, 7946) == 7000
    assert announced_port(7000, 5, 7946) == 7000
    assert announced_port(7000, 1, 7946) == 7946
    assert announced_port(0, 2, 7946) == 7946


def test_default_vsn_is_valid_and_bad_ones_are_refused() -> None:
    check_vsn(DEFAULT_VSN)
    with pytest.raises(ValueError, match="six uint8 versions"):
        check_vsn((1, 5, 2, 2, 5))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="six uint8 versions"):
        check_vsn((1, 5, 2, 2, 5, 256))
    with pytest.raises(ValueError, match="min <= cur <= max"):
        check_vsn((0, 5, 2, 2, 5, 4))
    with pytest.raises(ValueError, match="min <= cur <= max"):
        MemberlistConfig(name="a", bind=GossipAddress("127.0.0.1", 0), vsn=(1, 5, 2, 2, 3, 4))


def _net() -> MemberlistNet:
    config = MemberlistConfig(name="a", bind=GossipAddress("127.0.0.1", 7946))
    return MemberlistNet(
        config,
        MemoryGossipNetwork().transport(),
        MemberlistStats(),
        NullLog(),
        broadcasts=lambda overhead, limit: [],
        max_nodes=lambda: 10,
        inbound_budget=1 << 20,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1", GossipAddress("10.0.0.1", 7000)),
        (" 10.0.0.1:8301 ", GossipAddress("10.0.0.1", 8301)),
        ("seed/10.0.0.1:8301", GossipAddress("10.0.0.1", 8301)),
        ("seed/10.0.0.1", GossipAddress("10.0.0.1", 7000)),
        ("[::1]:8301", GossipAddress("::1", 8301)),
        ("[::1]", GossipAddress("::1", 7000)),
        ("::1", GossipAddress("::1", 7000)),
    ],
)
async def test_resolve_literal_addresses(text: str, expected: GossipAddress) -> None:
    assert await _net().resolve(text, 7000) == [expected]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "empty address"),
        ("seed/", "empty address"),
        ("/10.0.0.1", "empty node name provided"),
        ("10.0.0.1:0", "bad port in address"),
        ("10.0.0.1:65536", "bad port in address"),
        ("10.0.0.1:x", "bad port in address"),
        ("10.0.0.1:", "bad port in address"),
        ("[::1]:", "bad port in address"),
        ("[::1", "unclosed"),
        ("[::1]x", "after ']'"),
        ("bad:port:x:y]", "brackets"),
    ],
)
async def test_resolve_refuses_malformed_text(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        await _net().resolve(text, 7000)


async def test_resolve_names_through_the_resolver() -> None:
    with trio.fail_after(10):
        found = await _net().resolve("localhost:8301", 7000)
    assert found
    assert all(address.port == 8301 for address in found)
