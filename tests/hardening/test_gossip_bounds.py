"""Bounded gossip state and bounded gossip logging under hostile peers.

* Made-up nodes (alive messages over real UDP, push/pulls over real TCP) stop at the pool's
  member cap (``gossip_max_members``); the refusals are counted and logged once a second.
* A push/pull declaring more nodes than the cap is refused from its header alone.
* Suspect and dead messages about unknown nodes create nothing.
* Serf's state a peer can grow (members, buffered intents, the intent queue) is bounded.
* A flood of each kind of hostile input produces at most a few log lines a second, whatever
  the kind: a new log line on one of these paths that skips the throttle fails here.
* Plaintext gossip on a non-loopback address is warned about at start.
"""

from __future__ import annotations

import io
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import msgpack
import pytest
import trio
from rpc_helpers import NO_HTTP_NO_DNS, poll_until, running_agent

from agentrpc import Agent, Client, load_config
from agentrpc.gossip import memberlist as memberlist_module
from agentrpc.gossip.contract import GossipAddress, NodeInfo, PacketConnection
from agentrpc.gossip.memberlist import Memberlist, MemberlistConfig
from agentrpc.gossip.messages import (
    AckResp,
    Alive,
    Dead,
    ErrResp,
    IndirectPingReq,
    MessageType,
    NodeState,
    Ping,
    PushNodeState,
    PushPullHeader,
    Suspect,
    encode_body,
    encode_message,
)
from agentrpc.gossip.node_table import DEFAULT_MAX_MEMBERS, NodeTable
from agentrpc.gossip.packet import make_compound
from agentrpc.gossip.profiles import LAN
from agentrpc.gossip.security import Keyring
from agentrpc.gossip.serf import SerfConfig, SerfState
from agentrpc.gossip.serf_messages import (
    JoinIntent,
    LeaveIntent,
    Query,
    QueryResponse,
    Relay,
    SerfPushPull,
    UserEvent,
    encode_serf_message,
    encode_tags,
)
from agentrpc.gossip.stream import StreamEncoder, StreamReader
from agentrpc.gossip.transport import MemoryGossipNetwork
from agentrpc.logs import TRACE, LogHub, LogSubscription
from agentrpc.membership.gossip_pool import GossipPool
from agentrpc.membership.gossip_setup import exposure_warning

VSN = (1, 5, 2, 2, 5, 4)
META = encode_tags({"role": "fake"})
PLAIN = StreamEncoder(compress=False)


def fake_addr(index: int) -> bytes:
    return bytes((10, (index >> 16) & 0xFF, (index >> 8) & 0xFF, index & 0xFF))


def alive(name: str, index: int = 1, incarnation: int = 1) -> Alive:
    return Alive(incarnation, name, fake_addr(index), 7946, META, VSN)


def push_state(name: str, index: int, state: NodeState = NodeState.ALIVE) -> PushNodeState:
    return PushNodeState(name, fake_addr(index), 7946, META, 1, int(state), VSN)


def push_pull(nodes: list[PushNodeState], user_state: bytes = b"") -> bytes:
    return PLAIN.push_pull(nodes, user_state, join=False)


def loopback_overrides(**settings: object) -> dict[str, object]:
    return {
        "node_name": "target",
        "rpc_addr": "127.0.0.1:0",
        "serf_lan_addr": "127.0.0.1:0",
        "serf_wan_addr": "127.0.0.1:0",
        "server_addr": "127.0.0.1:0",
        "log_level": "ERR",
        **NO_HTTP_NO_DNS,
        **settings,
    }


def loopback_agent(**settings: object) -> Agent:
    overrides = loopback_overrides(**settings)
    return Agent(load_config(overrides=overrides), overrides=overrides, log_sink=io.StringIO())


async def exchange(host: str, port: int, data: bytes) -> bytes:
    """Send ``data`` on a new TCP stream, half-close, and read the reply until the end."""
    stream = await trio.open_tcp_stream(host, port)
    reply = b""
    async with stream:
        try:
            await stream.send_all(data)
            await stream.send_eof()
        except trio.BrokenResourceError:
            pass  # the agent may refuse and close before reading it all
        with trio.fail_after(10):
            try:
                while chunk := await stream.receive_some(65536):
                    reply += chunk
            except trio.BrokenResourceError:
                pass
    return reply


async def received(memberlist: Memberlist, count: int) -> None:
    """Wait until more than ``count`` datagrams arrived (paces a flood over real UDP)."""
    await poll_until(lambda: memberlist.stats.packets_received > count)


# --------------------------------------------------------------------------------------------
# The member cap, over real loopback sockets.


async def test_made_up_alive_nodes_stop_at_the_cap() -> None:
    """100,000 alive messages about made-up nodes over UDP: the pool keeps 500 members (the
    cap), counts every refusal, and says so in a throttled WARN."""
    agent = loopback_agent(gossip_max_members=500)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        lines = agent.hub.subscribe(TRACE, queue_size=100_000, queue_bytes=64 << 20)
        lan = agent.gossip_addresses["lan"]
        memberlist = agent.memberlists["lan"]
        messages = [encode_message(alive(f"fake-{i}", i)) for i in range(100_000)]
        packets = [make_compound(messages[i : i + 200]) for i in range(0, len(messages), 200)]
        udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        start = time.monotonic()
        with udp:
            for index, packet in enumerate(packets):
                await udp.sendto(packet, (lan.host, lan.port))
                if index % 8 == 7:  # stay well inside the kernel's receive buffer
                    await received(memberlist, index - 4)
        await poll_until(lambda: memberlist.stats.packets_received >= len(packets))
        elapsed = time.monotonic() - start
        assert len(memberlist.table) == 500
        assert memberlist.stats.refused_members == 100_000 - 499
        assert agent.lan.stats()["members"] == "500"
        async with Client(agent.rpc_addresses[0]) as client:
            stats = await client.stats()
        assert stats["memberlist_lan"]["refused_members"] == str(100_000 - 499)
        warnings = [line for line in drain(lines) if "gossip_max_members" in line]
        assert 1 <= len(warnings) <= 2 + elapsed
        assert "[WARN]" in warnings[0]
        agent.shutdown()


def test_the_default_cap_is_enforced() -> None:
    """At the default (50,000) the table stops growing too: the bound is not a test value."""
    table = NodeTable("local", LAN, rng=random.Random(1))
    assert table.max_members == DEFAULT_MAX_MEMBERS == 50_000
    table.set_alive(b"\x7f\x00\x00\x01", 7946, b"", VSN, 0.0)
    nodes = [push_state(f"fake-{i}", i) for i in range(DEFAULT_MAX_MEMBERS + 1000)]
    table.merge(nodes, 1.0)
    assert len(table) == DEFAULT_MAX_MEMBERS
    assert table.refused_members == 1001
    # Known nodes still update at the cap.
    table.alive(alive("fake-7", 7, incarnation=5), 2.0)
    known = table.get("fake-7")
    assert known is not None and known.incarnation == 5


async def test_the_agent_passes_its_cap_to_both_layers_and_it_changes_at_run_time(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with running_agent("memory", gossip_max_members=7) as agent:
        memberlist = agent.memberlists["lan"]
        pool = agent.lan
        assert isinstance(pool, GossipPool)
        assert memberlist.max_members == 7 and pool.serf.max_members == 7
        pool.set_max_members(9)
        assert memberlist.max_members == 9 and pool.serf.max_members == 9
        memberlist.set_max_members(11)
        assert memberlist.max_members == 11
        with pytest.raises(ValueError):
            memberlist.set_max_members(0)


async def test_push_pulls_share_the_cap_with_alive_messages() -> None:
    """A push/pull under the cap is merged; the next one fills the table to the cap and the
    rest is refused and counted; alive messages then find the table full too."""
    agent = loopback_agent(gossip_max_members=500)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        lan = agent.gossip_addresses["lan"]
        memberlist = agent.memberlists["lan"]
        reply = await exchange(
            lan.host, lan.port, push_pull([push_state(f"a-{i}", i) for i in range(400)])
        )
        assert reply  # our state came back
        await poll_until(lambda: memberlist.stats.push_pulls == 1)
        assert len(memberlist.table) == 401
        second = [push_state(f"b-{i}", 1000 + i) for i in range(400)]
        await exchange(lan.host, lan.port, push_pull(second))
        await poll_until(lambda: memberlist.stats.push_pulls == 2)
        assert len(memberlist.table) == 500
        assert memberlist.stats.refused_members == 301
        udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with udp:
            await udp.sendto(encode_message(alive("c-1", 5000)), (lan.host, lan.port))
        await poll_until(lambda: memberlist.stats.refused_members == 302)
        assert len(memberlist.table) == 500
        assert agent.lan.stats()["members"] == "500"
        agent.shutdown()


async def test_a_push_pull_declaring_more_nodes_than_the_cap_is_refused_from_its_header() -> None:
    """The header declares 150,000 nodes; only 10 node states follow and the stream stays
    open: the agent refuses at once (an ``err`` reply, the stream closed), never waiting for
    or decoding the rest. Nothing was merged."""
    agent = loopback_agent(gossip_max_members=500)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        lan = agent.gossip_addresses["lan"]
        memberlist = agent.memberlists["lan"]
        header = PushPullHeader(nodes=150_000, user_state_len=0, join=False)
        start = bytes((MessageType.PUSH_PULL,)) + encode_body(header)
        start += b"".join(encode_body(push_state(f"fake-{i}", i)) for i in range(10))
        stream = await trio.open_tcp_stream(lan.host, lan.port)
        reply = b""
        async with stream:
            await stream.send_all(start)  # and nothing more: no EOF either
            with trio.fail_after(5):
                while chunk := await stream.receive_some(65536):
                    reply += chunk
        reader = StreamReader()
        reader.feed(reply)
        message = reader.next_message()
        assert isinstance(message, ErrResp)
        assert "150000" in message.error and "500" in message.error
        assert memberlist.stats.bad_streams == 1
        assert len(memberlist.table) == 1
        # The cap follows set_max_members: at 200,000 the same header would be read on.
        memberlist.set_max_members(200_000)
        reader = memberlist.new_stream_reader()
        reader.feed(start)
        assert reader.next_message() is None  # waiting for the other 149,990 states
        agent.shutdown()


async def test_inbound_streams_together_hold_at_most_the_stream_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many streams that each send part of a big push/pull and then stall: together they may
    hold only ``MAX_INBOUND_STREAM_BYTES``; the one that would pass it is refused with an
    ``err``, and the bytes come back when the stalled streams end."""
    monkeypatch.setattr(memberlist_module, "MAX_INBOUND_STREAM_BYTES", 256 * 1024)
    agent = loopback_agent()
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        lan = agent.gossip_addresses["lan"]
        memberlist = agent.memberlists["lan"]
        whole = push_pull([push_state(f"big-{i}", i) for i in range(4000)])
        assert len(whole) > 200_000
        part = whole[: 100 * 1024]  # never finished: each stream holds what it sent
        stalled = []
        for _ in range(2):
            stream = await trio.open_tcp_stream(lan.host, lan.port)
            await stream.send_all(part)
            stalled.append(stream)
        await poll_until(lambda: memberlist.inbound_stream_bytes >= 2 * len(part))
        refused = await exchange(lan.host, lan.port, part)
        reader = StreamReader()
        reader.feed(refused)
        message = reader.next_message()
        assert isinstance(message, ErrResp)
        assert "try again later" in message.error
        assert memberlist.stats.streams_over_budget == 1
        assert memberlist.inbound_stream_bytes <= 256 * 1024
        for stream in stalled:
            await stream.aclose()
        await poll_until(lambda: memberlist.inbound_stream_bytes == 0)
        # With the budget free again, a whole (small) push/pull is served.
        reply = await exchange(lan.host, lan.port, push_pull([push_state("ok", 1)]))
        reader = StreamReader()
        reader.feed(reply)
        assert not isinstance(reader.next_message(), ErrResp)
        agent.shutdown()


async def test_suspect_and_dead_about_unknown_nodes_create_nothing() -> None:
    """As Go's suspectNode/deadNode: a node first heard of as suspect, dead or left (in a
    message or in a push/pull) gets no entry, in memberlist or in serf."""
    agent = loopback_agent()
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        lan = agent.gossip_addresses["lan"]
        memberlist = agent.memberlists["lan"]
        messages: list[bytes] = []
        for i in range(300):
            messages.append(encode_message(Suspect(1, f"s-{i}", "attacker")))
            messages.append(encode_message(Dead(1, f"d-{i}", "attacker")))
            messages.append(encode_message(Dead(1, f"l-{i}", f"l-{i}")))
        udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with udp:
            for index in range(0, len(messages), 100):
                await udp.sendto(make_compound(messages[index : index + 100]), (lan.host, lan.port))
                await received(memberlist, index // 100)
        states = [
            push_state(f"p-{i}", i, state)
            for i, state in enumerate([NodeState.SUSPECT, NodeState.DEAD, NodeState.LEFT] * 100)
        ]
        await exchange(lan.host, lan.port, push_pull(states))
        await poll_until(lambda: memberlist.stats.push_pulls == 1)
        assert [info.name for info in memberlist.members()] == ["target"]
        assert agent.lan.stats()["members"] == "1"
        assert memberlist.stats.refused_members == 0
        agent.shutdown()


# --------------------------------------------------------------------------------------------
# Serf's state.


def serf_state(max_members: int) -> SerfState:
    return SerfState(SerfConfig(node_name="local", max_members=max_members), clock=lambda: 0.0)


def info(name: str, index: int = 1) -> NodeInfo:
    return NodeInfo(name, fake_addr(index), 7946, META, 1, NodeState.ALIVE, VSN, 0.0)


def test_serf_intents_about_unknown_nodes_are_bounded() -> None:
    serf = serf_state(max_members=50)
    for i in range(10_000):
        serf.notify_message(encode_serf_message(JoinIntent(ltime=i + 2, node=f"ghost-{i}")))
    assert sum(serf.buffered_intent(f"ghost-{i}") is not None for i in range(10_000)) == 50
    assert serf.refused_intents == 10_000 - 50
    # Only what was buffered is rebroadcast.
    assert len(serf.broadcasts) == 50
    # A newer intent about a node already buffered still replaces it.
    serf.notify_message(encode_serf_message(LeaveIntent(ltime=99_999, node="ghost-3")))
    assert serf.buffered_intent("ghost-3") == ("leave", 99_999)


def test_serf_members_past_the_cap_replace_the_oldest_failed_or_left_one() -> None:
    serf = serf_state(max_members=3)
    for name in ("local", "a", "b"):
        serf.notify_join(info(name))
    serf.notify_leave(info("a"))  # failed first: the oldest to go
    serf.notify_leave(info("b"))
    serf.notify_join(info("c"))
    assert serf.member("a") is None and serf.member("b") is not None
    assert serf.num_nodes() == 3
    serf.notify_join(info("d"))
    assert serf.member("b") is None
    # Everybody alive: a new member is refused and counted, nobody is evicted.
    serf.notify_join(info("e"))
    assert serf.member("e") is None
    assert serf.refused_members == 1
    assert sorted(m.name for m in serf.members()) == ["c", "d", "local"]
    serf.set_max_members(4)
    serf.notify_join(info("e"))
    assert serf.member("e") is not None


def test_serf_intent_queue_is_pruned_as_it_grows() -> None:
    """News about a known member (ever newer leave intents) is rebroadcast, but the queue
    never holds more than twice ``max_queue_depth`` between periodic checks."""
    serf = SerfState(
        SerfConfig(node_name="local", max_queue_depth=100, queue_depth_warning=100),
        clock=lambda: 0.0,
    )
    serf.notify_join(info("peer"))
    for ltime in range(2, 5000):
        serf.notify_message(encode_serf_message(LeaveIntent(ltime=ltime, node="peer")))
        assert len(serf.broadcasts) <= 200
    serf.notify_message(encode_serf_message(UserEvent(ltime=7, name="e" * 10_000)))
    assert len(serf.broadcasts) <= 200


# --------------------------------------------------------------------------------------------
# Logging: a flood of each kind of hostile input, on the in-process network.

CAP = 4
QUIET = replace(
    LAN, name="quiet", probe_interval=3600.0, gossip_interval=0.0, push_pull_interval=0.0
)
"""No probes, gossip or push/pulls of our own during a flood: every line is the attacker's."""
TARGET = GossipAddress("127.0.0.1", 7946)
FLOOD = 200


class Attacker:
    """An in-process peer: datagrams from 127.0.0.2:7946, streams to the target."""

    def __init__(self, network: MemoryGossipNetwork, packets: PacketConnection) -> None:
        self.network = network
        self.packets = packets
        self.transport = network.transport()

    async def udp(self, data: bytes) -> None:
        await self.packets.send_to(data, TARGET)
        await trio.sleep(0.001)  # the target reads it (virtual time)

    async def user(self, serf_message: bytes) -> None:
        await self.udp(bytes((MessageType.USER,)) + serf_message)

    async def tcp(self, data: bytes) -> None:
        """One stream: send ``data``, half-close, read whatever comes back until the end."""
        stream = await self.transport.dial(TARGET)
        assert isinstance(stream, trio.abc.HalfCloseableStream)
        async with stream:
            await stream.send_all(data)
            await stream.send_eof()
            with trio.fail_after(60):
                while await stream.receive_some(65536):
                    pass


Flood = Callable[[Attacker, int], Awaitable[None]]


def _wrong_types() -> bytes:
    return bytes((MessageType.ALIVE,)) + bytes(msgpack.packb({"Node": 5, "Incarnation": "x"}))


def _alive_raw(**fields: object) -> bytes:
    body = {
        "Incarnation": 1,
        "Node": "raw",
        "Addr": b"\x7f\x00\x00\x02",
        "Port": 7946,
        "Meta": b"",
        "Vsn": list(VSN),
    }
    body.update(fields)
    return bytes((MessageType.ALIVE,)) + bytes(msgpack.packb(body, use_bin_type=True))


def _serf_push_pull_state(names: int) -> bytes:
    state = SerfPushPull(ltime=5, status_ltimes={f"ghost-{i}": 3 for i in range(names)})
    return encode_serf_message(state)


FLOODS: dict[str, Flood] = {
    "garbage": lambda a, i: a.udp(random.Random(i).randbytes(1 + i % 1300)),
    "bad-crc": lambda a, i: a.udp(b"\x0c\x00\x00\x00\x00" + b"x" * 20),
    "bad-compound": lambda a, i: a.udp(b"\x07\xff" + b"\x00" * 10),
    "truncated-compound": lambda a, i: a.udp(b"\x07\x02\x00\x05\x00\x05\x04"),
    "corrupt-lzw": lambda a, i: a.udp(b"\x09" + msgpack.packb({"Algo": 0, "Buf": b"\xff" * 50})),
    "wrong-field-types": lambda a, i: a.udp(_wrong_types()),
    "unknown-message-type": lambda a, i: a.udp(b"\x63\x80"),
    "ping-for-another-node": lambda a, i: a.udp(
        encode_message(Ping(i, f"someone-{'x' * 300}-{i}", b"\x7f\x00\x00\x02", 7946, "a"))
    ),
    "indirect-ping-bad-target": lambda a, i: a.udp(
        encode_message(IndirectPingReq(i, b"\x01\x02\x03", 7946, "known-1"))
    ),
    "alive-bad-versions": lambda a, i: a.udp(_alive_raw(Node=f"v-{i}", Vsn=[3, 1, 2, 2, 5, 4])),
    "alive-bad-address": lambda a, i: a.udp(_alive_raw(Node=f"ad-{i}", Addr=b"\x01\x02\x03")),
    "alive-big-meta": lambda a, i: a.udp(_alive_raw(Node=f"m-{i}", Meta=b"\x00" * 600)),
    "alive-past-the-cap": lambda a, i: a.udp(encode_message(alive(f"fake-{i}", 100 + i))),
    "alive-conflicting-address": lambda a, i: a.udp(
        encode_message(alive("known-1", 200 + i, incarnation=10 + i))
    ),
    "alive-about-us": lambda a, i: a.udp(
        encode_message(Alive(1000 + i, "target", b"\x7f\x00\x00\x01", 7946, b"x", VSN))
    ),
    "suspect-about-us": lambda a, i: a.udp(encode_message(Suspect(1000 + i, "target", "a"))),
    "dead-about-us": lambda a, i: a.udp(encode_message(Dead(1000 + i, "target", "a"))),
    "suspect-unknown": lambda a, i: a.udp(encode_message(Suspect(1, f"ghost-{i}", "a"))),
    "dead-unknown": lambda a, i: a.udp(encode_message(Dead(1, f"ghost-{i}", "a"))),
    "serf-undecodable": lambda a, i: a.user(b"\x00\xc1garbage"),
    "serf-unknown-type": lambda a, i: a.user(b"\x7f\x80"),
    "serf-push-pull-as-message": lambda a, i: a.user(_serf_push_pull_state(1)),
    "serf-join-intent-unknown": lambda a, i: a.user(
        encode_serf_message(JoinIntent(ltime=10 + i, node=f"ghost-{i}"))
    ),
    "serf-leave-intent-known": lambda a, i: a.user(
        encode_serf_message(LeaveIntent(ltime=10 + i, node="known-2"))
    ),
    "serf-leave-intent-about-us": lambda a, i: a.user(
        encode_serf_message(LeaveIntent(ltime=10 + i, node="target"))
    ),
    "serf-user-event": lambda a, i: a.user(encode_serf_message(UserEvent(ltime=i, name="e"))),
    "serf-query": lambda a, i: a.user(
        encode_serf_message(Query(i, i, b"\x7f\x00\x00\x02", 7946, "a", name="q"))
    ),
    "serf-query-response": lambda a, i: a.user(encode_serf_message(QueryResponse(i, i, "someone"))),
    "serf-relay": lambda a, i: a.user(
        encode_serf_message(Relay(b"\x7f\x00\x00\x02", 7946, "x" * 500, b"\x00"))
    ),
    "stream-garbage": lambda a, i: a.tcp(b"\x06" + b"\xff" * 64),
    "stream-bad-envelope": lambda a, i: a.tcp(b"\x0a\xff\xff\xff\xff"),
    "stream-bad-user-message": lambda a, i: a.tcp(b"\x08\xde\xad"),
    "stream-unknown-type": lambda a, i: a.tcp(b"\x63"),
    "stream-truncated-push-pull": lambda a, i: a.tcp(push_pull([push_state("t", 1)])[:-5]),
    "stream-ping-for-another-node": lambda a, i: a.tcp(
        PLAIN.ping(Ping(i, f"someone-{i}", b"\x7f\x00\x00\x02", 7946, "a"))
    ),
    "stream-invalid-type": lambda a, i: a.tcp(PLAIN.ack(AckResp(i))),
    "stream-error-message": lambda a, i: a.tcp(PLAIN.err("e" * 1000)),
    "push-pull-too-many-nodes": lambda a, i: a.tcp(
        push_pull([push_state(f"fake-{n}", n) for n in range(CAP + 1)])
    ),
    "push-pull-bad-versions": lambda a, i: a.tcp(
        push_pull([PushNodeState("old", fake_addr(1), 7946, b"", 1, 0, (1, 1, 1, 2, 5, 4))])
    ),
    "push-pull-bad-serf-state": lambda a, i: a.tcp(push_pull([], b"\x00\xc1bad")),
    "push-pull-wrong-serf-type": lambda a, i: a.tcp(push_pull([], b"\x01\x80")),
    "push-pull-many-serf-intents": lambda a, i: a.tcp(push_pull([], _serf_push_pull_state(50))),
    "push-pull-encrypted-without-key": lambda a, i: a.tcp(
        StreamEncoder(keyring=Keyring(b"k" * 16)).push_pull([], join=False)
    ),
}


async def _flood_target(
    network: MemoryGossipNetwork, hub: LogHub, nursery: trio.Nursery
) -> tuple[Memberlist, GossipPool]:
    pool = GossipPool(
        "lan", SerfConfig(node_name="target", max_members=CAP), logger=hub.logger("serf")
    )
    memberlist = Memberlist(
        MemberlistConfig(name="target", bind=TARGET, profile=QUIET, max_members=CAP),
        pool.serf,
        pool.serf,
        hub.logger("memberlist"),
        network.transport(),
        random.Random(1),
    )
    pool.attach(memberlist)
    await nursery.start(memberlist.run)
    await nursery.start(pool.run)
    return memberlist, pool


@pytest.mark.parametrize("kind", sorted(FLOODS))
async def test_a_flood_of_each_kind_logs_a_few_lines_a_second(
    kind: str, autojump_clock: trio.abc.Clock
) -> None:
    network = MemoryGossipNetwork()
    sink = io.StringIO()
    hub = LogHub(level=TRACE, sink=sink)
    async with trio.open_nursery() as nursery:
        memberlist, pool = await _flood_target(network, hub, nursery)
        packets, _listener = await network.transport().bind(GossipAddress("127.0.0.2", 7946))
        attacker = Attacker(network, packets)
        for index in (1, 2, 3):  # the table is full: target + 3 known nodes
            await attacker.udp(encode_message(alive(f"known-{index}", index)))
        assert len(memberlist.table) == CAP
        before = sink.getvalue().count("\n")
        start = time.monotonic()
        for i in range(FLOOD):
            await FLOODS[kind](attacker, i)
        elapsed = time.monotonic() - start
        lines = sink.getvalue().splitlines()[before:]
        # A handful of throttle keys per kind, each at most one line a second.
        allowed = 4 * (1 + math.ceil(elapsed))
        assert len(lines) <= allowed, f"{len(lines)} lines for {FLOOD} inputs:\n" + "\n".join(
            lines[:10]
        )
        assert all(len(line) < 700 for line in lines), "a peer's string was not clipped"
        assert len(memberlist.table) <= CAP and pool.serf.num_nodes() <= CAP
        nursery.cancel_scope.cancel()


async def test_too_many_push_pulls_at_once_are_refused_quietly(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memberlist_module, "MAX_PUSH_PULL_REQUESTS", 0)
    network = MemoryGossipNetwork()
    sink = io.StringIO()
    hub = LogHub(level=TRACE, sink=sink)
    async with trio.open_nursery() as nursery:
        memberlist, _pool = await _flood_target(network, hub, nursery)
        packets, _listener = await network.transport().bind(GossipAddress("127.0.0.2", 7946))
        attacker = Attacker(network, packets)
        before = sink.getvalue().count("\n")
        start = time.monotonic()
        for _ in range(FLOOD):
            await attacker.tcp(push_pull([]))
        elapsed = time.monotonic() - start
        lines = sink.getvalue().splitlines()[before:]
        assert memberlist.stats.bad_streams == FLOOD
        assert any("Too many pending push/pull" in line for line in lines)
        assert len(lines) <= 4 * (1 + math.ceil(elapsed))
        nursery.cancel_scope.cancel()


async def test_pings_for_another_node_over_real_udp_and_tcp_log_once_a_second() -> None:
    """The issue's measurement: pings addressed to a wrong node name (53k WARN lines in 10 s
    before). Over loopback UDP and TCP, at most about one line a second each."""
    agent = loopback_agent(log_level="TRACE")
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        lines = agent.hub.subscribe(TRACE, queue_size=100_000, queue_bytes=64 << 20)
        lan = agent.gossip_addresses["lan"]
        memberlist = agent.memberlists["lan"]
        ping = encode_message(Ping(1, "not-the-target" * 50, b"\x7f\x00\x00\x01", 1, "a"))
        udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        start = time.monotonic()
        with udp:
            for index in range(3000):
                await udp.sendto(ping, (lan.host, lan.port))
                if index % 100 == 99:
                    await received(memberlist, index - 50)
        for index in range(100):
            await exchange(
                lan.host, lan.port, PLAIN.ping(Ping(index, "not-the-target", b"", 0, "a"))
            )
        elapsed = time.monotonic() - start
        seen = drain(lines)
        unexpected = [line for line in seen if "unexpected node" in line]
        assert 2 <= len(unexpected) <= 2 * (1 + math.ceil(elapsed))
        assert all(len(line) < 500 for line in unexpected)  # the 700-character name is clipped
        assert len(seen) <= 6 * (1 + math.ceil(elapsed))
        agent.shutdown()


def drain(subscription: LogSubscription) -> list[str]:
    out: list[str] = []
    while True:
        try:
            out.append(subscription.lines.receive_nowait())
        except trio.WouldBlock:
            return out


# --------------------------------------------------------------------------------------------
# Plaintext gossip on a reachable address.


@pytest.mark.parametrize(
    ("host", "encrypted", "warns"),
    [
        ("127.0.0.1", False, False),
        ("127.0.0.53", False, False),
        ("::1", False, False),
        ("0.0.0.0", False, True),
        ("::", False, True),
        ("10.1.2.3", False, True),
        ("192.168.0.7", False, True),
        ("10.1.2.3", True, False),
        ("0.0.0.0", True, False),
    ],
)
def test_plaintext_gossip_on_a_reachable_address_is_warned_about(
    host: str, encrypted: bool, warns: bool
) -> None:
    warning = exposure_warning("lan", GossipAddress(host, 8301), encrypted)
    assert (warning is not None) == warns
    if warning is not None:
        assert "LAN gossip port" in warning and "without encryption" in warning


async def test_an_agent_gossiping_on_loopback_does_not_warn() -> None:
    agent = loopback_agent(log_level="TRACE")
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        replay = agent.hub.subscribe(TRACE).replay
        assert any("agent started" in line for line in replay)
        assert not any("without encryption" in line for line in replay)
        agent.shutdown()
