"""Hostile input on an agent's gossip port (real UDP and TCP on 127.0.0.1): bad packets are
dropped and counted, bad streams closed, and the agent keeps answering and gossiping."""

from __future__ import annotations

import random

import msgpack
import trio
from rpc_helpers import NO_HTTP_NO_DNS, poll_until

from agentrpc import Agent, Client, load_config


async def test_garbage_on_the_gossip_port_is_dropped_and_counted() -> None:
    overrides = {
        "node_name": "target",
        "rpc_addr": "127.0.0.1:0",
        "serf_lan_addr": "127.0.0.1:0",
        "serf_wan_addr": "127.0.0.1:0",
        "server_addr": "127.0.0.1:0",
        "log_level": "ERR",
        **NO_HTTP_NO_DNS,
    }
    agent = Agent(load_config(overrides=overrides), overrides=overrides)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        lan = agent.gossip_addresses["lan"]
        memberlist = agent.memberlists["lan"]
        rng = random.Random(5)
        udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        bad_udp = [
            b"",
            b"\xff" * 100,
            b"\x0c\x00\x00\x00\x00" + b"x" * 20,  # a CRC that does not match
            b"\x07\xff" + b"\x00" * 10,  # a compound claiming 255 parts
            b"\x09" + msgpack.packb({"Algo": 0, "Buf": b"\xff" * 50}),  # corrupt LZW
            b"\x04" + msgpack.packb({"Node": 5, "Incarnation": "x"}),  # an alive of wrong types
            *(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 1400))) for _ in range(300)),
        ]
        for packet in bad_udp:
            await udp.sendto(packet, (lan.host, lan.port))
        udp.close()
        for attack in (b"\x06" + b"\xff" * 64, b"\x0a\xff\xff\xff\xff", b"\x08\xde\xad"):
            stream = await trio.open_tcp_stream(lan.host, lan.port)
            await stream.send_all(attack)
            with trio.move_on_after(5):
                while await stream.receive_some(4096):
                    pass
            await stream.aclose()
        await poll_until(
            lambda: memberlist.stats.bad_packets + memberlist.stats.bad_messages >= 250
        )
        await poll_until(lambda: memberlist.stats.bad_streams >= 3)
        # Still a healthy agent: RPC answers, the node is alive, and stats show the counts.
        async with Client(agent.rpc_addresses[0]) as client:
            (me,) = await client.members_lan()
            assert (me.name, me.status) == ("target", "alive")
            stats = await client.stats()
            assert int(stats["memberlist_lan"]["bad_streams"]) >= 3
        agent.shutdown()
