"""The client with names that are not UTF-8, from our agent and from a Go agent's encoder."""

from __future__ import annotations

import ipaddress

import msgpack
import trio
from rpc_helpers import client_for, running_agent

from agentrpc import Client
from agentrpc.protocol.codec import text_bytes
from agentrpc.transports import memory_stream_pair

NAME = b"n\xff\xfe-one"
NAME_TEXT = NAME.decode("utf-8", "surrogateescape")


async def test_a_non_utf8_node_name_through_the_client(transport: str) -> None:
    async with running_agent(transport, node_name=NAME_TEXT) as agent, client_for(agent) as client:
        (member,) = await client.members_lan()
        assert text_bytes(member.name) == NAME
        stats = await client.stats()
        assert text_bytes(stats["agent"]["name"]) == NAME
        # serf's RemoveFailedNode does not fail for a node it does not know.
        await client.force_leave(NAME_TEXT + "-ghost")
        # The connection is still in sync after those frames.
        assert [m.name for m in await client.members_lan()] == [NAME_TEXT]


def _str16(raw: bytes) -> bytes:
    return b"\xda" + len(raw).to_bytes(2, "big") + raw


def _go_header(seq: int) -> bytes:
    # go-msgpack's default handle (old spec): every string is a raw str, written here as str16.
    return b"\x82\xa5Error" + _str16(b"") + b"\xa3Seq" + bytes((seq,))


def _go_member() -> bytes:
    """A Member as go-msgpack's old-spec handle writes it: []byte Addr as a raw str too."""
    fields = [
        (b"Name", _str16(NAME)),
        (b"Addr", _str16(bytes([192, 168, 200, 254]))),
        (b"Port", b"\xcd\x1f\x4d"),
        (b"Tags", b"\x81" + _str16(b"role") + _str16(b"web\xff")),
        (b"Status", _str16(b"alive")),
    ]
    return b"\x85" + b"".join(_str16(key) + value for key, value in fields)


async def test_members_from_a_go_old_spec_encoder() -> None:
    ours, theirs = memory_stream_pair()

    async def fake_agent() -> None:
        unpacker = msgpack.Unpacker(raw=True)
        answered = 0
        while answered < 2:
            data = await theirs.receive_some()
            assert data
            unpacker.feed(data)
            for obj in unpacker:
                if b"Command" not in obj:
                    continue  # the handshake body
                seq = obj[b"Seq"]
                if obj[b"Command"] == b"handshake":
                    await theirs.send_all(_go_header(seq))
                else:
                    assert obj[b"Command"] == b"members-lan"
                    body = b"\x81" + _str16(b"Members") + b"\x91" + _go_member()
                    await theirs.send_all(_go_header(seq) + body)
                answered += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake_agent)
        async with Client(stream=ours) as client:
            (member,) = await client.members_lan()
    assert text_bytes(member.name) == NAME
    assert member.addr == ipaddress.ip_address("192.168.200.254")
    assert member.port == 8013
    assert member.tags == {"role": "web\udcff"}
    assert member.status == "alive"
