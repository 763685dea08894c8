"""The agent's server port: Status.Ping, members-wan forwarded from a client agent to a
server agent over the pooled multiplexer, the fallback, and reload of the per-IP cap."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import msgpack
import trio
from rpc_helpers import client_for, running_agent

from agentrpc.gossip.messages import AckResp, Ping
from agentrpc.gossip.stream import StreamEncoder, StreamReader
from agentrpc.membership.pool import LocalPool
from agentrpc.protocol.bodies import Member


async def test_server_port_answers_status_ping_over_byte_0() -> None:
    async with running_agent("tcp") as agent:
        assert agent.server_address is not None
        stream = await trio.open_tcp_stream("127.0.0.1", agent.server_address.port)
        request = {"Seq": 1, "ServiceMethod": "Status.Ping"}
        await stream.send_all(b"\x00" + msgpack.packb(request) + msgpack.packb({}))
        unpacker = msgpack.Unpacker()
        replies: list[object] = []
        with trio.fail_after(5):
            while len(replies) < 2:
                unpacker.feed(await stream.receive_some(4096))
                replies.extend(unpacker)
        assert replies == [{"Error": "", "Seq": 1, "ServiceMethod": "Status.Ping"}, {}]
        await stream.aclose()


async def test_server_agent_advertises_its_real_server_port() -> None:
    async with running_agent("tcp") as agent, client_for(agent) as client:
        assert agent.server_address is not None
        (member,) = await client.members_lan()
        assert member.tags["port"] == str(agent.server_address.port) != "0"


class KnownServerPool(LocalPool):
    """A client's LAN pool that knows one server (what gossip will tell it)."""

    def __init__(self, local: Member, server: Member) -> None:
        super().__init__("lan", local)
        self.server = server

    def members(self) -> list[Member]:
        return [*super().members(), self.server]


async def test_client_agent_asks_a_server_for_members_wan() -> None:
    async with running_agent("tcp", node_name="srv") as server:
        assert server.server_address is not None
        server_member = Member(
            "srv",
            ipaddress.ip_address("127.0.0.1"),
            8301,
            {"role": "consul", "dc": "dc1", "port": str(server.server_address.port)},
        )
        local = Member("cli", ipaddress.ip_address("127.0.0.1"), 8301, {"role": "node"})
        pool = KnownServerPool(local, server_member)
        async with (
            running_agent("tcp", node_name="cli", server=False, lan=pool) as client_agent,
            client_for(client_agent) as client,
        ):
            wan = await client.members_wan()
            assert [m.name for m in wan] == ["srv.dc1"]
            assert wan[0].tags["role"] == "consul"
            # The second call reuses the pooled connection.
            assert [m.name for m in await client.members_wan()] == ["srv.dc1"]
            assert client_agent.rpc_pool is not None
            assert client_agent.rpc_pool.stats.dials == 1


async def test_client_agent_falls_back_to_an_empty_list_and_says_so() -> None:
    # A "server" whose server port nobody listens on.
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    server_member = Member(
        "gone", ipaddress.ip_address("127.0.0.1"), 8301, {"role": "consul", "port": str(dead_port)}
    )
    local = Member("cli", ipaddress.ip_address("127.0.0.1"), 8301, {"role": "node"})
    async with (
        running_agent("tcp", server=False, lan=KnownServerPool(local, server_member)) as agent,
        client_for(agent) as client,
    ):
        assert await client.members_wan() == []
        assert any("members-wan: no server answered" in line for line in agent.hub.lines())


async def test_reload_changes_the_server_port_per_ip_cap(tmp_path: Path) -> None:
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"rpc_max_conns_per_client": 100}))
    async with running_agent("tcp", files=[str(config)]) as agent, client_for(agent) as client:
        assert agent.server_port is not None
        config.write_text(json.dumps({"rpc_max_conns_per_client": 7}))
        await client.reload()
        assert agent.server_port.router.max_conns_per_client == 7


async def test_byte_6_on_the_server_port_reaches_the_wan_gossip_pool() -> None:
    async with running_agent("tcp") as agent:
        assert agent.server_address is not None
        stream = await trio.open_tcp_stream("127.0.0.1", agent.server_address.port)
        encoder = StreamEncoder()
        await stream.send_all(b"\x06" + encoder.ping(Ping(seq_no=77, node="node1.dc1")))
        reader = StreamReader()
        with trio.fail_after(5):
            while (message := reader.next_message()) is None:
                data = await stream.receive_some(4096)
                assert data, "the server port closed the gossip stream without an ack"
                reader.feed(data)
        assert isinstance(message, AckResp)
        assert message.seq_no == 77
        await stream.aclose()
        assert agent.memberlists["wan"].stats.streams_accepted >= 1
