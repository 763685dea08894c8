"""The command table: built once over a narrow host, it follows the pools the host swaps in,
and its async commands get a reply capability, never the connection."""

from __future__ import annotations

import ast
import io
import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgpack
import trio

import agentrpc.commands
from agentrpc.budget import SharedBudget
from agentrpc.commands import AgentCommands
from agentrpc.config import AgentConfig
from agentrpc.logs import LogHub
from agentrpc.membership import LocalPool, Memberlist, MembershipPool
from agentrpc.protocol.bodies import Member
from agentrpc.protocol.codec import Encoded, Request
from agentrpc.protocol.constants import LEAVE, MEMBERS_LAN, MEMBERS_WAN
from agentrpc.rpc_connection import RPCStats
from agentrpc.serverport.pool import ConnectionPool


def _member(name: str) -> Member:
    return Member(name, ipaddress.ip_address("127.0.0.1"), 8301)


class _Host:
    """Just what the commands need (CommandHost), and a record of what they did."""

    def __init__(self, *, server: bool = True) -> None:
        self.config = AgentConfig(node_name="n1", server=server)
        self.started_at = 0.0
        self.lan: MembershipPool = LocalPool("lan", _member("n1"))
        self.wan: MembershipPool | None = LocalPool("wan", _member("n1.dc1")) if server else None
        self.memberlists: Mapping[str, Memberlist] = {}
        self.rpc_pool: ConnectionPool | None = None
        self.rpc_stats = RPCStats()
        self.send_budget = SharedBudget()
        self.monitor_dropped = 0
        self.log = LogHub(sink=io.StringIO()).logger("agent")
        self.events: list[str] = []

    async def leave(self) -> str:
        self.events.append("leave")
        return ""

    async def reload(self) -> str:
        return ""

    def shutdown(self) -> None:
        self.events.append("shutdown")


def _names(reply: tuple[str, Any]) -> list[str]:
    error, body = reply
    assert error == ""
    assert isinstance(body, Encoded)
    return [member["Name"] for member in msgpack.unpackb(bytes(body))["Members"]]


def test_the_table_follows_a_pool_swapped_in_after_it_was_built() -> None:
    host = _Host()
    commands = AgentCommands(host)
    assert _names(commands.instant[MEMBERS_LAN](None)) == ["n1"]
    host.lan = LocalPool("lan", _member("gossip-n1"))  # what gossip does at start
    host.wan = LocalPool("wan", _member("gossip-n1.dc1"))
    assert _names(commands.instant[MEMBERS_LAN](None)) == ["gossip-n1"]
    assert _names(commands.instant[MEMBERS_WAN](None)) == ["gossip-n1.dc1"]


def test_a_client_asks_the_servers_for_wan_members() -> None:
    commands = AgentCommands(_Host(server=False))
    assert MEMBERS_WAN not in commands.instant
    assert MEMBERS_WAN in commands.async_


async def test_leave_replies_through_the_capability_before_shutting_down() -> None:
    host = _Host()
    commands = AgentCommands(host)
    replies: list[tuple[str, Any]] = []

    async def reply_now(error: str, body: Any) -> None:
        host.events.append("reply")
        replies.append((error, body))
        await trio.lowlevel.checkpoint()

    result = await commands.async_[LEAVE](Request(LEAVE, 7, None, None), reply_now)
    assert result is None
    assert replies == [("", None)]
    assert host.events == ["leave", "reply", "shutdown"]


def test_commands_import_neither_the_agent_nor_gossip_internals() -> None:
    tree = ast.parse(Path(agentrpc.commands.__file__).read_text())
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "agent" not in imported
    assert not any(name.startswith("gossip") for name in imported)
