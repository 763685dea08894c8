"""Strings as the Go agents see them: bytes, not necessarily UTF-8.

A Go string is any bytes, and go-msgpack writes it as a str whatever it holds (fixstr, str8
``0xd9`` with ``WriteExt``, str16 ``0xda`` from the old-spec default handle, which also sends a
``[]byte`` as a raw str; a new-spec encoder may send a ``[]byte`` as bin ``0xc4`` where we expect
a string). The reference reads all of it; so must we, and a name that is not UTF-8 must come
back byte for byte.

* raw frames built by hand, the way go-msgpack writes them, against our agent: ``force-leave``
  answers success as serf's ``RemoveFailedNode`` does (it never fails for an unknown node),
  and ``members-lan`` lists such a member with its bytes unchanged, gossip included;
* the real ``serf`` CLI (Go) sends a non-UTF-8 name to our agent and to a real serf agent and
  gets the same answer from both;
* a real serf agent whose node name is not UTF-8 (serf 0.8 accepts it) and ours, in one
  cluster: each lists the other's bytes unchanged, and a force-leave for that name matches;
* our CLI prints such names (as their bytes, like serf's CLI) even on a strict UTF-8 stdout,
  and ``--json`` stays valid JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path

import pytest
import trio
from rpc_helpers import RawConnection, client_for, running_agent
from test_go_rpc_interop import go_cli, our_agent
from test_serf_cluster_interop import (
    eventually,
    our_agent as our_named_agent,
    our_members,
    serf_agent,
)

from agentrpc import Client
from agentrpc.agent import Agent
from agentrpc.gossip.messages import Alive, decode_body, encode_body
from agentrpc.gossip.serf_messages import (
    LeaveIntent,
    UserEvent,
    decode_serf_message,
    decode_tags,
    encode_serf_message,
    encode_tags,
)
from agentrpc.gossip.transport import MemoryGossipNetwork
from agentrpc.protocol.codec import Response, as_text, text_bytes

GO_NAME = b"n\xff\xfe\x80-go"
"""A node name that is not UTF-8: 0xff/0xfe are never valid, 0x80 is a lone continuation."""
OUR_NAME = b"ours-\xe2\x82"
"""Ours ends with a UTF-8 sequence cut short."""
GO_ARG = os.fsdecode(GO_NAME)
"""GO_NAME as an argv item: subprocess passes it through os.fsencode, so the child process
(serf, our CLI) gets exactly GO_NAME's bytes."""
assert os.fsencode(GO_ARG) == GO_NAME

OK_REPLY = b"\x82\xa5Error\xa0\xa3Seq"


def fixstr(raw: bytes) -> bytes:
    assert len(raw) < 32
    return bytes((0xA0 | len(raw),)) + raw


def go_str(raw: bytes, kind: str) -> bytes:
    """``raw`` as go-msgpack writes a string (or a ``[]byte``) of that kind."""
    if kind == "str8":
        return b"\xd9" + bytes((len(raw),)) + raw
    if kind == "str16":
        return b"\xda" + len(raw).to_bytes(2, "big") + raw
    assert kind == "bin8"
    return b"\xc4" + bytes((len(raw),)) + raw


def go_request(command: bytes, seq: int, kind: str) -> bytes:
    """A request header as go-msgpack writes the struct: keys sorted, strings of ``kind``."""
    assert seq < 128
    return (
        b"\x83\xa7Command" + go_str(command, kind) + b"\xa3Seq" + bytes((seq,))
        + b"\xa5Token" + go_str(b"", kind)
    )  # fmt: skip


def go_force_leave(node: bytes, seq: int, kind: str) -> bytes:
    return go_request(b"force-leave", seq, kind) + b"\x81\xa4Node" + go_str(node, kind)


async def raw_call(conn: RawConnection, frame: bytes, seq: int, *, reply_body: bool) -> Response:
    """Send hand-built bytes and read the one reply (its raw bytes land in ``conn.raw``)."""
    conn.decoder.expect(seq, body=reply_body)
    await conn.send_bytes(frame)
    (response,) = await conn.read(1)
    assert response.seq == seq
    return response


# ------------------------------------------------------------------- gossip, as serf writes it


def old_spec_str(raw: bytes) -> bytes:
    """go-msgpack's default handle (memberlist, serf): fixstr below 32 bytes, else raw16."""
    return fixstr(raw) if len(raw) < 32 else b"\xda" + len(raw).to_bytes(2, "big") + raw


def test_gossip_names_tags_and_events_round_trip_byte_for_byte() -> None:
    long_name = GO_NAME * 5  # 40 bytes: a raw16 string on serf's wire
    alive = (
        b"\x86\xa4Addr" + old_spec_str(b"\x7f\x00\x00\x01") + b"\xabIncarnation\x01"
        + b"\xa4Meta" + old_spec_str(b"\xff\x81" + old_spec_str(b"role") + old_spec_str(b"w\xfe"))
        + b"\xa4Node" + old_spec_str(long_name) + b"\xa4Port\xcd\x1f\x4d"
        + b"\xa3Vsn" + old_spec_str(bytes([1, 5, 2, 2, 5, 4]))
    )  # fmt: skip
    decoded = decode_body(Alive, alive)
    assert text_bytes(decoded.node) == long_name
    assert decode_tags(decoded.meta) == {"role": "w\udcfe"}
    assert encode_tags(decode_tags(decoded.meta)) == decoded.meta
    assert encode_body(decoded) == alive
    # serf's leave intent (what force-leave broadcasts) and a user event with such names.
    leave = b"\x00\x83\xa5LTime\x07\xa4Node" + old_spec_str(GO_NAME) + b"\xa5Prune\xc2"
    intent = decode_serf_message(leave)
    assert intent == LeaveIntent(7, GO_ARG, False)
    assert encode_serf_message(intent) == leave
    event = (
        b"\x03\x84\xa2CC\xc2\xa5LTime\x03\xa4Name" + old_spec_str(b"deploy-\xff")
        + b"\xa7Payload" + old_spec_str(b"\x00\xff")
    )  # fmt: skip
    user_event = decode_serf_message(event)
    assert user_event == UserEvent(3, "deploy-\udcff", b"\x00\xff", False)
    assert encode_serf_message(user_event) == event


# ------------------------------------------------------------------- raw frames, our agent


@pytest.mark.parametrize("kind", ["str8", "str16", "bin8"])
async def test_force_leave_with_a_non_utf8_name_answers_like_the_reference(kind: str) -> None:
    async with running_agent() as agent:
        conn = await RawConnection.open(agent)
        await conn.handshake()
        conn.raw.clear()
        response = await raw_call(conn, go_force_leave(GO_NAME, 2, kind), 2, reply_body=False)
        # Success, header only, byte for byte what serf/Consul send; the connection stays open.
        assert response == Response(2, "", None)
        assert bytes(conn.raw) == OK_REPLY + b"\x02"
        stats = await raw_call(conn, go_request(b"stats", 3, kind), 3, reply_body=True)
        assert stats.error == ""
        assert stats.body["agent"]["name"] == "node1"
        await conn.aclose()


def agent_on(
    network: MemoryGossipNetwork, index: int, name: str
) -> AbstractAsyncContextManager[Agent]:
    return running_agent(
        "memory",
        gossip_network=network,
        node_name=name,
        serf_lan_addr=f"127.0.0.{index}:8301",
        serf_wan_addr=f"127.0.0.{index}:8302",
    )


async def lan_statuses(agent: Agent) -> dict[bytes, str]:
    async with client_for(agent) as client:
        return {text_bytes(m.name): m.status for m in await client.members_lan()}


async def wait_for(agent: Agent, expected: dict[bytes, str]) -> None:
    with trio.fail_after(120):
        while await lan_statuses(agent) != expected:  # noqa: ASYNC110 - virtual time
            await trio.sleep(0.1)


async def test_a_non_utf8_member_is_listed_unchanged_and_force_left(
    autojump_clock: trio.abc.Clock,
) -> None:
    network = MemoryGossipNetwork()
    go_name = GO_ARG
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(agent_on(network, 1, "first"))
        other = await stack.enter_async_context(agent_on(network, 2, go_name))
        async with client_for(first) as client:
            assert await client.join(["127.0.0.2:8301"]) == 1
        # The name crossed the gossip wire both ways and came back as the same bytes.
        await wait_for(first, {b"first": "alive", GO_NAME: "alive"})
        await wait_for(other, {b"first": "alive", GO_NAME: "alive"})

        conn = await RawConnection.open(first)
        await conn.handshake()
        conn.raw.clear()
        members = await raw_call(conn, go_request(b"members-lan", 2, "str16"), 2, reply_body=True)
        assert {as_text(m["Name"]) for m in members.body["Members"]} == {"first", go_name}
        # On the wire: the name's own bytes in a str (new spec, as the reference sends it).
        assert b"\xa4Name" + fixstr(GO_NAME) in conn.raw

        other.shutdown()
        await other.wait_stopped()
        await wait_for(first, {b"first": "alive", GO_NAME: "failed"})
        response = await raw_call(conn, go_force_leave(GO_NAME, 3, "str16"), 3, reply_body=False)
        assert response == Response(3, "", None)
        # The intent names the same bytes: it matched the member.
        await wait_for(first, {b"first": "alive", GO_NAME: "left"})
        await conn.aclose()


# ------------------------------------------------------------------- the real serf (Go)


async def test_serf_cli_force_leave_with_a_non_utf8_name(serf_binary: str) -> None:
    """``serf force-leave`` (Go client, ugorji codec with WriteExt: the name goes out as a str
    holding the raw bytes) gets the same answer from our agent as from a real serf agent."""
    async with our_agent() as (_process, rpc_addr), Client(rpc_addr) as client:
        async with client.monitor("info") as lines:
            ours = await go_cli(serf_binary, "force-leave", f"-rpc-addr={rpc_addr}", GO_ARG)
            # Our agent received the very bytes: it logs the name it was asked about.
            logged = b""
            with trio.fail_after(10):
                async for line in lines:
                    if "force leaving node" in line:
                        logged = text_bytes(line)
                        break
            assert logged.endswith(b"force leaving node: " + GO_NAME)
        assert (await client.stats())["agent"]["name"] == "ours"
    async with serf_agent(serf_binary, "go-ref") as reference:
        theirs = await go_cli(serf_binary, "force-leave", f"-rpc-addr={reference.rpc_addr}", GO_ARG)
    assert (ours.returncode, ours.stdout, ours.stderr) == (0, b"", b"")
    assert (ours.returncode, ours.stdout, ours.stderr) == (
        theirs.returncode,
        theirs.stdout,
        theirs.stderr,
    )


async def test_a_serf_agent_named_in_non_utf8_bytes_and_ours(
    serf_binary: str, tmp_path: Path
) -> None:
    """serf 0.8 accepts any bytes as a node name (the CLI passes them from argv): both agents
    list each other's bytes unchanged, and a Go force-leave for that name matches on ours."""
    go_name, our_name = GO_ARG, os.fsdecode(OUR_NAME)
    async with our_named_agent(our_name, tmp_path) as ours:
        async with serf_agent(serf_binary, go_name) as go:
            async with Client(ours.rpc_addr) as client:
                assert await client.join([f"127.0.0.1:{go.bind_port}"]) == 1

            async def both_alive() -> bool:
                mine = await our_members(ours)
                return {text_bytes(name): status for name, (status, _, _) in mine.items()} == {
                    OUR_NAME: "alive",
                    GO_NAME: "alive",
                }

            await eventually(both_alive)
            # serf prints names as the bytes it holds: ours arrived through our gossip intact.
            listed = await go_cli(serf_binary, "members", f"-rpc-addr={go.rpc_addr}")
            assert listed.returncode == 0, listed.stderr
            rows = {line.split()[0]: line.split()[2] for line in listed.stdout.splitlines()}
            assert rows == {OUR_NAME: b"alive", GO_NAME: b"alive"}
            # Our members-lan sends serf's name back as the same bytes, in a str.
            stream = await trio.open_tcp_stream("127.0.0.1", int(ours.rpc_addr.rsplit(":", 1)[1]))
            conn = RawConnection(stream)
            await conn.handshake()
            await raw_call(conn, go_request(b"members-lan", 2, "str8"), 2, reply_body=True)
            assert b"\xa4Name" + fixstr(GO_NAME) in conn.raw
            assert b"\xa4Name" + fixstr(OUR_NAME) in conn.raw
            await conn.aclose()
            go.process.send_signal(signal.SIGKILL)

        async def go_failed() -> bool:
            return (await our_members(ours)).get(go_name, ("",))[0] == "failed"

        await eventually(go_failed)
        forced = await go_cli(serf_binary, "force-leave", f"-rpc-addr={ours.rpc_addr}", GO_ARG)
        assert (forced.returncode, forced.stderr) == (0, b"")

        async def go_left() -> bool:
            return (await our_members(ours)).get(go_name, ("",))[0] == "left"

        await eventually(go_left)


async def our_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Our CLI as a user runs it, with a strict UTF-8 stdout (as under a UTF-8 locale such as
    en_US.UTF-8, where Python's stdout refuses surrogates; the C locale would escape them)."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    with trio.fail_after(20):
        return await trio.run_process(
            [sys.executable, "-m", "agentrpc.cli", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )


async def test_our_cli_prints_non_utf8_names(tmp_path: Path) -> None:
    async with our_named_agent(os.fsdecode(OUR_NAME), tmp_path) as ours:
        flag = f"--rpc-addr={ours.rpc_addr}"
        table = await our_cli("members", flag)
        assert (table.returncode, table.stderr) == (0, b"")
        # The name's own bytes, as serf's CLI prints them.
        assert table.stdout.splitlines()[1].startswith(OUR_NAME + b"  127.0.0.1:")
        detailed = await our_cli("members", "--detailed", flag)
        assert detailed.returncode == 0
        assert OUR_NAME in detailed.stdout
        as_json = await our_cli("members", "--json", flag)
        assert as_json.returncode == 0
        assert as_json.stdout.isascii()
        (member,) = json.loads(as_json.stdout)
        # \udcXX escapes: valid JSON, and json.loads gives back the same name.
        assert text_bytes(member["name"]) == OUR_NAME
        # force-leave with such a name from argv; an error that quotes one prints its bytes.
        forced = await our_cli("force-leave", flag, GO_ARG)
        assert (forced.returncode, forced.stdout) == (1, b"")
        assert forced.stderr == (
            b"Error force leaving: no member named '"
            + GO_NAME
            + b"' is known to the agent (`agentrpc members` and `agentrpc members --wan` "
            b"list them).\n"
        )
        refused = await our_cli("monitor", flag, "--log-level", GO_ARG)
        assert refused.returncode == 1
        # (The agent upper-cases the level; the bytes that are not UTF-8 stay as they were.)
        expected = (
            b"Error starting monitor: Unknown log level: "
            + GO_NAME.upper()
            + b" (the levels: TRACE, DEBUG, INFO, WARN, ERR)\n"
        )
        assert refused.stderr == expected
