"""Interop with a real hashicorp/raft 1.1.2 node (tests/raft/go/raft_node, built against
Debian's package): it joins our 3-server cluster as a voter through byte 1 on our server ports,
receives a snapshot and the log, leads our servers, and no acknowledged entry is lost when
leaders are killed on either side."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import trio
from go_programs import build_go_program
from test_raft_engine import BOUND, PortNode, port_cluster, port_leaders, wait_until

from agentrpc.raft.configuration import Configuration, Server
from agentrpc.raft.kv_fsm import set_command

SOURCE = Path(__file__).parent / "go" / "raft_node"
SMALL = dict(snapshot_threshold=16, trailing_logs=4, snapshot_interval=1.0)


class GoNode:
    """The Go node's process and its line-per-command control channel."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buffer = bytearray()
        self.address = ""

    async def _line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        with trio.fail_after(30):
            while b"\n" not in self._buffer:
                chunk = await self.process.stdout.receive_some(65536)
                assert chunk, "the Go node exited"
                self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(json.dumps({"op": op, **fields}).encode() + b"\n")
        return await self._line()

    async def apply(self, command: bytes) -> dict[str, Any]:
        return await self.call("apply", cmd=base64.b64encode(command).decode())

    async def poll(self, op: str, predicate: Any, **fields: Any) -> dict[str, Any]:
        """Ask until the answer satisfies ``predicate`` (bounded; the Go side has no events)."""
        with trio.fail_after(BOUND):
            while True:
                answer = await self.call(op, **fields)
                if predicate(answer):
                    return answer
                await trio.sleep(0.1)


async def start_go(nursery: trio.Nursery, binary: Path) -> GoNode:
    args = [str(binary), "--id", "go1", "--snapshot-threshold", "16", "--trailing-logs", "4"]

    async def run(task_status: trio.TaskStatus[trio.Process]) -> None:
        await trio.run_process(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            check=False,
            task_status=task_status,
        )

    process: trio.Process = await nursery.start(run)
    node = GoNode(process)
    hello = await node._line()
    assert hello["ok"]
    node.address = hello["address"]
    return node


async def wait_applied_all(nodes: list[PortNode], index: int, data: dict[str, str]) -> None:
    with trio.fail_after(BOUND):
        for node in nodes:
            assert node.engine is not None
            await node.engine.wait_applied(index)
            assert node.fsm.data == data


async def test_a_go_raft_node_joins_follows_leads_and_nothing_committed_is_lost(
    tmp_path: Path,
) -> None:
    binary = build_go_program(SOURCE)
    acknowledged: dict[str, str] = {}
    async with port_cluster(tmp_path, **SMALL) as (nursery, nodes):
        engines = [n.engine for n in nodes if n.engine is not None]
        configuration = Configuration(tuple(Server(n.id, n.address) for n in nodes))
        for engine in engines:
            engine.bootstrap(configuration)
        await wait_until(engines, lambda: len(port_leaders(nodes)) == 1)
        leader = port_leaders(nodes)[0]
        assert leader.engine is not None
        for i in range(40):
            await leader.engine.apply(set_command(f"k{i}", f"v{i}"))
            acknowledged[f"k{i}"] = f"v{i}"
        with trio.fail_after(BOUND):
            await leader.engine.wait_snapshot(16)
        assert leader.engine.core.first_index > 1  # compacted: a joiner needs the snapshot

        async with trio.open_nursery() as go_nursery:
            go = await start_go(go_nursery, binary)
            # 1. The Go node joins as a voter and receives the snapshot and the log.
            index = await leader.engine.add_voter("go1", go.address)
            assert isinstance(index, int)
            await go.poll("dump", lambda a: a["result"] == acknowledged)
            stats = (await go.call("stats"))["result"]
            assert int(stats["last_snapshot_index"]) >= 16
            assert stats["state"] == "Follower"
            assert "go1" in leader.engine.stats()["latest_configuration"]

            # 2. Kill our leader: three of four voters remain; someone leads, nothing is lost.
            assert leader.scope is not None
            leader.scope.cancel()
            rest = [n for n in nodes if n is not leader]
            with trio.fail_after(BOUND):
                while True:
                    ours = port_leaders(rest)
                    go_state = (await go.call("state"))["result"]
                    if ours or go_state == "Leader":
                        break
                    await trio.sleep(0.1)
            if ours:
                assert ours[0].engine is not None
                await ours[0].engine.apply(set_command("after-kill", "ours"))
                acknowledged["after-kill"] = "ours"
                # 3. Hand leadership to the Go node.
                await ours[0].engine.transfer_leadership("go1")
            else:
                answer = await go.apply(set_command("after-kill", "go"))
                assert answer["ok"], answer
                acknowledged["after-kill"] = "go"
            await go.poll("state", lambda a: a["result"] == "Leader")

            # 4. Our servers follow the Go leader; writes through it reach them.
            for i in range(20):
                answer = await go.apply(set_command(f"g{i}", str(i)))
                assert answer["ok"], answer
                acknowledged[f"g{i}"] = str(i)
            go_index = answer["index"]
            await wait_applied_all(rest, go_index, acknowledged)
            for node in rest:
                assert node.engine is not None
                assert node.engine.leader_address == go.address
                assert node.engine.stats()["state"] == "Follower"

            # 5. Our killed leader restarts from SQLite and catches up from the Go leader.
            await nursery.start(leader.run)
            await wait_applied_all([leader], go_index, acknowledged)

            # 6. Kill the Go leader: our three servers elect one of theirs and lose nothing.
            go.process.kill()
            go_nursery.cancel_scope.cancel()
        engines = [n.engine for n in nodes if n.engine is not None]
        await wait_until(engines, lambda: len(port_leaders(nodes)) == 1)
        new_leader = port_leaders(nodes)[0]
        assert new_leader.engine is not None
        await new_leader.engine.apply(set_command("final", "x"))
        acknowledged["final"] = "x"
        await wait_applied_all(nodes, new_leader.engine.applied_index, acknowledged)
