"""Serf's own agent RPC dialect on the agent's second listener (``serf_rpc_addr``), over the
in-process transports and gossip network (autojump clock): the gate (serf's handshake text,
``auth``), every command's reply shape, event streams keyed by Seq (``stop`` ends one with no
record after its reply), queries (ack, response, done) answered through ``respond`` on
another connection, and the Python :class:`SerfClient` over all of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio
from rpc_helpers import RawConnection, memory_network_of, running_agent

from agentrpc.agent import Agent
from agentrpc.client import (
    KeyOperationError,
    QueryAck,
    QueryResponse,
    SerfClient,
)
from agentrpc.client_errors import RPCError
from agentrpc.gossip.transport import MemoryGossipNetwork
from agentrpc.protocol.codec import Response
from agentrpc.serf_commands import parse_event_filter
from agentrpc.transports import connect

KEY = "cg8StVXbQJ0gPvMd9o7yrg=="
KEY2 = "4le2xwSQgNTAB6Ucyh6Vjw=="


@asynccontextmanager
async def serf_agent(
    network: MemoryGossipNetwork, index: int, **settings: Any
) -> AsyncIterator[Agent]:
    async with running_agent(
        "memory",
        gossip_network=network,
        node_name=f"node{index}",
        serf_lan_addr=f"127.0.0.{index}:8301",
        serf_wan_addr=f"127.0.0.{index}:8302",
        serf_rpc_addr=f"memory://serf-{id(network)}-{index}",
        **settings,
    ) as agent:
        yield agent


def serf_client(agent: Agent, **kwargs: Any) -> SerfClient:
    return SerfClient(agent.serf_rpc_addresses[0], network=memory_network_of(agent), **kwargs)


async def raw(agent: Agent) -> RawConnection:
    stream = await connect(agent.serf_rpc_addresses[0], network=memory_network_of(agent))
    return RawConnection(stream)


@asynccontextmanager
async def cluster(count: int, **settings: Any) -> AsyncIterator[list[Agent]]:
    network = MemoryGossipNetwork()
    async with AsyncExitStack() as stack:
        agents = [
            await stack.enter_async_context(serf_agent(network, i, **settings))
            for i in range(1, count + 1)
        ]
        if count > 1:
            async with serf_client(agents[0]) as client:
                assert await client.join([f"127.0.0.{i}:8301" for i in range(2, count + 1)]) == (
                    count - 1
                )
            with trio.fail_after(60):
                for agent in agents:
                    while len(agent.lan.members()) < count:  # noqa: ASYNC110 - virtual time
                        await trio.sleep(0.1)
        yield agents


# --------------------------------------------------------------------------------------------
# The gate.


async def test_handshake_version_error_is_serfs_and_commands_need_it_first(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with cluster(1) as (agent,):
        connection = await raw(agent)
        seq = await connection.request("handshake", {"Version": 2})
        assert await connection.read(1) == [Response(seq, "Unsupported IPC version", None)]
        await connection.handshake()
        seq = await connection.request("handshake", {"Version": 1})
        assert await connection.read(1) == [Response(seq, "Handshake already performed", None)]
        # Consul's commands are not serf's: refused, then closed.
        seq = await connection.request("members-lan")
        assert await connection.read_until_eof() == [Response(seq, "Unsupported command", None)]

        before = await raw(agent)
        seq = await before.request("members")
        assert await before.read_until_eof() == [Response(seq, "Handshake required", None)]


async def test_auth_gates_every_command_but_handshake_and_auth(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with cluster(1, serf_rpc_auth="s3cret") as (agent,):
        connection = await raw(agent)
        await connection.handshake()
        seq = await connection.request("members")
        # No body with it (serf's client does not read one), and the connection stays open.
        assert await connection.read(1) == [Response(seq, "Authentication required", None)]
        seq = await connection.request("stop", {"Stop": 9})
        assert await connection.read(1) == [Response(seq, "Authentication required", None)]
        seq = await connection.request("auth", {"AuthKey": "wrong"})
        assert await connection.read(1) == [Response(seq, "Invalid authentication token", None)]
        seq = await connection.request("auth", {"AuthKey": "s3cret"})
        assert await connection.read(1) == [Response(seq, "", None)]
        members = await connection.call("members", reply_body=True)
        assert [m["Name"] for m in members.body["Members"]] == ["node1"]

        with pytest.raises(RPCError, match="Invalid authentication token"):
            async with serf_client(agent, auth_key="nope"):
                pass
        async with serf_client(agent, auth_key="s3cret") as client:
            assert [m.name for m in await client.members()] == ["node1"]
        # Without the key, calls that expect a body get the gate's bare header as an error,
        # at once (the body they wait for never comes), and the connection stays in step.
        async with serf_client(agent) as client:
            with trio.fail_after(5):
                for _ in range(2):
                    with pytest.raises(RPCError, match="Authentication required"):
                        await client.stats()
                    with pytest.raises(RPCError, match="Authentication required"):
                        await client.get_coordinate("node1")


# --------------------------------------------------------------------------------------------
# Commands answered at once.


async def test_members_filtered_stats_tags_and_coordinates(autojump_clock: trio.abc.Clock) -> None:
    async with cluster(3) as agents, serf_client(agents[0]) as client:
        names = sorted(m.name for m in await client.members())
        assert names == ["node1", "node2", "node3"]
        found = await client.members_filtered(name="node[12]", status="alive")
        assert sorted(m.name for m in found) == ["node1", "node2"]
        assert await client.members_filtered(tags={"role": "nothing"}) == []
        assert len(await client.members_filtered(tags={"role": "cons.*"})) == 3
        # Serf anchors every filter (``^...$``): a prefix alone matches nothing.
        assert await client.members_filtered(name="node") == []
        assert await client.members_filtered(name="ode1") == []
        assert await client.members_filtered(tags={"role": "cons"}) == []
        with pytest.raises(RPCError, match="Failed to compile regex"):
            await client.members_filtered(name="node(")

        stats = await client.stats()
        assert set(stats) == {"agent", "runtime", "serf", "tags", "event_handlers"}
        assert stats["agent"] == {"name": "node1"}
        assert stats["serf"]["members"] == "3"
        assert "coordinate_resets" in stats["serf"]
        assert stats["tags"]["role"] == "consul"

        await client.update_tags({"rack": "r1"}, delete=["vsn_max"])
        with trio.fail_after(30):
            while True:
                tags = {
                    m.name: m.tags
                    for m in await serf_client_members(agents[1])
                    if m.name == "node1"
                }["node1"]
                if tags.get("rack") == "r1":
                    break
                await trio.sleep(0.2)
        assert "vsn_max" not in tags
        assert (await client.stats())["tags"]["rack"] == "r1"

        # Coordinates: our own at once; a peer's once a probe of it was acked.
        assert await client.get_coordinate("node1") is not None
        assert await client.get_coordinate("nobody") is None
        with trio.fail_after(60):
            while await client.get_coordinate("node2") is None:  # noqa: ASYNC110 - virtual time
                await trio.sleep(0.5)
        assert await client.rtt("node2") >= 0.0
        with pytest.raises(RPCError, match="Could not find a coordinate for node 'ghost'"):
            await client.rtt("ghost", "node1")


async def serf_client_members(agent: Agent) -> list[Any]:
    async with serf_client(agent) as client:
        return await client.members()


async def test_coordinates_can_be_disabled(autojump_clock: trio.abc.Clock) -> None:
    async with cluster(1, disable_coordinates=True) as (agent,), serf_client(agent) as client:
        assert await client.get_coordinate("node1") is None
        connection = await raw(agent)
        await connection.handshake()
        reply = await connection.call("get-coordinate", {"Node": "node1"}, reply_body=True)
        assert reply.body == {
            "Coord": {"Adjustment": 0.0, "Error": 0.0, "Height": 0.0, "Vec": None},
            "Ok": False,
        }
        assert "coordinate_resets" not in (await client.stats())["serf"]


# --------------------------------------------------------------------------------------------
# Events and streams.


def test_event_filters_parse_as_serfs() -> None:
    assert [(f.event, f.name) for f in parse_event_filter("")] == [("*", "")]  # type: ignore[union-attr]
    parsed = parse_event_filter("member-join,user:deploy,query")
    assert parsed is not None
    assert [(f.event, f.name) for f in parsed] == [
        ("member-join", ""),
        ("user", "deploy"),
        ("query", ""),
    ]
    assert parse_event_filter("member-join,bogus") is None


async def test_stream_records_events_and_stop_ends_it_before_its_reply(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with cluster(2) as agents, serf_client(agents[0]) as one, serf_client(agents[1]) as two:
        async with one.stream("user:deploy,member-leave") as events:
            await two.event("other", b"skipped")
            await two.event("deploy", b"v2", coalesce=False)
            with trio.fail_after(30):
                record = await events.__anext__()
            assert record == {
                "Coalesce": False,
                "Event": "user",
                "LTime": record["LTime"],
                "Name": "deploy",
                "Payload": b"v2",
            }
        # The raw protocol: a stream, events, then stop; no record of its Seq after the reply.
        connection = await raw(agents[0])
        await connection.handshake()
        seq = await connection.request("stream", {"Type": "user"})
        connection.decoder.expect(seq, body=False, stream=True)
        assert await connection.read(1) == [Response(seq, "", None)]
        # A second stream of that Seq is refused (a header alone: read it as such).
        connection.decoder.forget(seq)
        assert await connection.request("stream", {"Type": "user"}, seq=seq) == seq
        (exists,) = await connection.read(1)
        assert exists == Response(seq, "Stream with given sequence exists", None)
        connection.decoder.expect(seq, body=True, stream=True)
        for index in range(5):
            await two.event(f"e{index}", b"")
        with trio.fail_after(30):
            records = await connection.read(5)
        assert sorted(r.body["Name"] for r in records) == [f"e{i}" for i in range(5)]
        stop = await connection.request("stop", {"Stop": seq})
        assert await connection.read(1) == [Response(stop, "", None)]
        for index in range(5):
            await two.event(f"late{index}", b"")
        await trio.sleep(5)
        # Everything after the stop's reply belongs to other Seqs: the next reply is members'.
        check = await connection.call("members", reply_body=True)
        assert check.seq == stop + 1
        assert b"late" not in connection.raw
        bad = await connection.request("stream", {"Type": "user,nonsense"})
        (invalid,) = await connection.read(1)
        assert (invalid.seq, invalid.error) == (bad, "Invalid event filter")


async def test_member_events_in_a_stream(autojump_clock: trio.abc.Clock) -> None:
    network = MemoryGossipNetwork()
    async with (
        serf_agent(network, 1) as first,
        serf_client(first) as client,
        client.stream("member-join") as events,
        serf_agent(network, 2) as second,
        serf_client(second) as other,
    ):
        assert await other.join(["127.0.0.1:8301"]) == 1
        with trio.fail_after(30):
            record = await events.__anext__()
        assert record["Event"] == "member-join"
        assert [m.name for m in record["Members"]] == ["node2"]


async def test_query_acks_responses_and_done_with_respond_on_another_connection(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with cluster(3) as agents, AsyncExitStack() as stack:
        responders = []
        for agent in agents[1:]:
            client = await stack.enter_async_context(serf_client(agent))
            events = await stack.enter_async_context(client.stream("query:ping"))
            responders.append((agent, client, events))

        async def respond(agent: Agent, client: SerfClient, events: Any) -> None:
            record = await events.__anext__()
            assert (record["Event"], record["Name"], record["Payload"]) == ("query", "ping", b"?")
            await client.respond(record["ID"], f"pong from {agent.config.node_name}".encode())
            with pytest.raises(RPCError, match="No pending queries matching ID"):
                await client.respond(record["ID"] + 1000, b"")

        asker = await stack.enter_async_context(serf_client(agents[0]))
        items: list[object] = []
        async with trio.open_nursery() as nursery:
            for responder in responders:
                nursery.start_soon(respond, *responder)
            async with asker.query("ping", b"?", request_ack=True, timeout=5.0) as replies:
                async for item in replies:
                    items.append(item)
        acks = {item.from_node for item in items if isinstance(item, QueryAck)}
        answers = {
            item.from_node: item.payload for item in items if isinstance(item, QueryResponse)
        }
        assert acks == {"node1", "node2", "node3"}
        assert answers == {"node2": b"pong from node2", "node3": b"pong from node3"}
        with pytest.raises(RPCError, match="Queries cannot contain the '_serf_' prefix"):
            async with asker.query("_serf_list-keys"):
                pass
        # _serf_ping without a payload is allowed, as serf's agent allows it.
        async with asker.query("_serf_ping", request_ack=True, timeout=2.0) as replies:
            pinged = [item async for item in replies]
        assert {item.from_node for item in pinged if isinstance(item, QueryAck)} >= {"node1"}


async def test_join_replay_force_leave_prune_and_leave(autojump_clock: trio.abc.Clock) -> None:
    network = MemoryGossipNetwork()
    async with serf_agent(network, 1) as first, serf_client(first) as client:
        async with (
            serf_agent(network, 2) as second,
            serf_client(second) as sender,
            serf_client(first) as watcher,
            watcher.stream("user") as replayed,
        ):
            # Events node2 saw before anyone joined it: ``Replay`` delivers them to node1.
            for index in range(3):
                await sender.event(f"old{index}", f"p{index}".encode(), coalesce=False)
            assert await client.join(["127.0.0.2:8301"], replay=True) == 1
            got: list[tuple[str, bytes]] = []
            with trio.fail_after(30):
                while len(got) < 3:
                    record = await replayed.__anext__()
                    got.append((record["Name"], record["Payload"]))
            assert sorted(got) == [("old0", b"p0"), ("old1", b"p1"), ("old2", b"p2")]
            with trio.fail_after(30):
                while len(first.lan.members()) < 2:  # noqa: ASYNC110 - virtual time
                    await trio.sleep(0.1)

            # Without Replay, a joiner ignores them: the first event node3 delivers is new.
            async with (
                serf_agent(network, 3) as third,
                serf_client(third) as late,
                late.stream("user") as fresh_only,
            ):
                assert await late.join(["127.0.0.2:8301"]) == 1
                with trio.fail_after(30):
                    while len(third.lan.members()) < 3:  # noqa: ASYNC110 - virtual time
                        await trio.sleep(0.1)
                await sender.event("fresh", b"new", coalesce=False)
                with trio.fail_after(30):
                    record = await fresh_only.__anext__()
                assert (record["Name"], record["Payload"]) == ("fresh", b"new")
            second.shutdown()
            await second.wait_stopped()
        with trio.fail_after(120):
            while {m.name: m.status for m in await client.members()}["node2"] != "failed":  # noqa: ASYNC110
                await trio.sleep(0.5)
        await client.force_leave("node2", prune=True)
        with trio.fail_after(30):
            while "node2" in {m.name for m in await client.members()}:  # noqa: ASYNC110
                await trio.sleep(0.5)
        await client.leave()
        with trio.fail_after(30):
            await first.wait_stopped()


async def test_serf_key_commands_and_their_errors(autojump_clock: trio.abc.Clock) -> None:
    async with cluster(2, encrypt=KEY) as agents, serf_client(agents[0]) as client:
        listed = await client.list_keys()
        assert (listed.keys, listed.num_nodes, listed.num_resp, listed.num_err) == (
            {KEY: 2},
            2,
            2,
            0,
        )
        installed = await client.install_key(KEY2)
        assert installed.keys == {} and installed.num_resp == 2
        await client.use_key(KEY2)
        await client.remove_key(KEY)
        assert (await client.list_keys()).keys == {KEY2: 2}
        with pytest.raises(KeyOperationError, match="2/2 nodes reported failure") as info:
            await client.remove_key(KEY2)  # the primary key cannot go
        assert set(info.value.result.messages) == {"node1", "node2"}
        with pytest.raises(KeyOperationError, match="illegal base64 data"):
            await client.install_key("not base64!")
        # The raw reply: serf's keyResponse, Keys nil but for list-keys.
        connection = await raw(agents[0])
        await connection.handshake()
        reply = await connection.call("install-key", {"Key": KEY2}, reply_body=True)
        assert reply.error == ""
        assert reply.body == {
            "Keys": None,
            "Messages": {},
            "NumErr": 0,
            "NumNodes": 2,
            "NumResp": 2,
        }
