"""Serf's upper layer in a mixed cluster: real serf agents (/usr/bin/serf) and our pools, over
real UDP/TCP on 127.0.0.1, encrypted.

Our side runs in this process, each node a memberlist plus a :class:`GossipPool` built as
:func:`agentrpc.membership.gossip_setup.start_pool` builds them (``pool.delegate`` as every
delegate). Serf's side sees user events and queries through event handler scripts that append
to a file (and answer queries on stdout); ours through the pool's subscription.

* ``serf event`` x10 reaches every node, each exactly once; our events reach serf's nodes;
  and 10/10 between two serf nodes whose keys keep them from talking to each other, so that
  only our nodes' relaying can carry them (2 serf + 6 ours);
* ``serf query`` gets acks and responses from ours, and ``serf query _serf_ping`` an ack from
  every node; our query gets serf's; ``_serf_ping`` and ``_serf_conflict`` from ours are
  acked and answered by serf;
* ``serf keys -list/-install/-use/-remove`` succeed on the mixed cluster, a rotation ends with
  every node on the new key alone (ours persisted in keyring files), and gossip still flows;
* a name conflict, in either direction, ends as in a serf-only cluster: the newcomer loses
  the vote and stops (serf's process exits; our pool asks to shut down), the original stays.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from process_helpers import free_port

from agentrpc.gossip.contract import GossipAddress
from agentrpc.gossip.memberlist import Memberlist, MemberlistConfig
from agentrpc.gossip.security import Keyring
from agentrpc.gossip.serf import QueryReceived, SerfConfig, UserEventReceived
from agentrpc.gossip.serf_conflict import ConflictVote
from agentrpc.gossip.transport import UdpTcpTransport
from agentrpc.log_protocol import CaptureLog
from agentrpc.member_status import MemberStatus
from agentrpc.membership.gossip_pool import GossipPool, QueryAck, QueryReply
from agentrpc.membership.keyring_file import load_keyring

pytestmark = pytest.mark.serf

HANDLER = """#!/bin/sh
# serf's event handler: user events are recorded, queries are answered on stdout.
if [ "$SERF_EVENT" = "user" ]; then
  payload=$(cat)
  echo "$SERF_USER_EVENT $payload" >> "$0.events"
elif [ "$SERF_EVENT" = "query" ]; then
  cat > /dev/null
  echo "$SERF_QUERY_NAME from $SERF_SELF_NAME"
fi
"""


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 20) -> None:
    """Poll a condition about real processes: bounded, every 100 ms."""
    with trio.fail_after(seconds):
        while not await check():  # noqa: ASYNC110 - real processes: nothing to wait on
            await trio.sleep(0.1)


# --------------------------------------------------------------------------------------------
# Serf agents.


@dataclass
class SerfNode:
    name: str
    process: trio.Process
    rpc_addr: str
    port: int
    events_file: Path
    output: bytearray
    """What the agent printed after it started (the last 256 KiB)."""

    @property
    def address(self) -> str:
        """Its gossip address."""
        return f"127.0.0.1:{self.port}"

    async def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        command, *rest = args
        return await trio.run_process(
            ["serf", command, f"-rpc-addr={self.rpc_addr}", *rest],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )

    async def query(self, *args: str, acks: list[str]) -> dict[str, object]:
        """``serf query -format=json ...`` until every node of ``acks`` acked, at most 3 times.

        A query reaches the other nodes by gossip alone: each node sends it a bounded number
        of times (``RetransmitMult`` 4 here) to random peers, so within the query's deadline a
        node can still miss it, in a serf-only cluster as well (seen once in a CI run: one of
        three matching nodes absent from a 2 s query). Every attempt must still be right as
        far as it goes: an ack from a node outside ``acks`` fails at once."""
        answers: dict[str, object] = {}
        for _attempt in range(3):
            result = await self.cli("query", "-format=json", *args)
            assert result.returncode == 0, result.stderr
            answers = json.loads(result.stdout)
            acked = answers["Acks"]
            assert isinstance(acked, list)
            assert set(acked) <= set(acks), acked
            if sorted(acked) == sorted(acks):
                return answers
        raise AssertionError(f"after 3 queries, acks from {answers['Acks']}, not {acks}")

    async def members(self) -> dict[str, dict[str, object]]:
        result = await self.cli("members", "-format=json")
        if result.returncode != 0:
            return {}
        return {m["name"]: m for m in json.loads(result.stdout)["members"]}

    def events(self) -> list[str]:
        if not self.events_file.exists():
            return []
        return self.events_file.read_text().splitlines()


@asynccontextmanager
async def serf_node(
    binary: str, name: str, tmp_path: Path, key: str, *extra: str
) -> AsyncIterator[SerfNode]:
    port = free_port()
    rpc_addr = f"127.0.0.1:{free_port()}"
    handler = tmp_path / f"handler-{name}-{port}.sh"
    handler.write_text(HANDLER)
    handler.chmod(0o755)
    argv = [binary, "agent", f"-node={name}", f"-bind=127.0.0.1:{port}",
            f"-rpc-addr={rpc_addr}", "-log-level=debug",
            f"-event-handler={handler}", "-tag", "kind=go", *extra]  # fmt: skip
    if key:  # else the caller gives its keys otherwise (``-keyring-file``)
        argv.append(f"-encrypt={key}")
    output = bytearray()
    async with _started(argv, output) as process:
        yield SerfNode(name, process, rpc_addr, port, Path(f"{handler}.events"), output)


@asynccontextmanager
async def _started(argv: list[str], output: bytearray) -> AsyncIterator[trio.Process]:
    """Start a serf agent, wait (20 s at most) for it to run, keep its output (the last
    256 KiB) while it runs; killed on exit if still running."""
    process = await trio.lowlevel.open_process(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    stream = process.stdout
    assert stream is not None
    try:
        with trio.fail_after(20):
            while b"Serf agent running" not in output:
                chunk = await stream.receive_some(65536)
                assert chunk, f"serf exited early: {output.decode(errors='replace')}"
                output += chunk

        async def keep() -> None:
            while chunk := await stream.receive_some(65536):
                output.extend(chunk)
                del output[: max(0, len(output) - (256 << 10))]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep)
            yield process
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(5):
            await process.wait()


# --------------------------------------------------------------------------------------------
# Our nodes.


@dataclass
class OurNode:
    name: str
    pool: GossipPool
    memberlist: Memberlist
    log: CaptureLog
    port: int
    scope: trio.CancelScope
    events: list[UserEventReceived] = field(default_factory=list)
    stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def status_of(self, name: str) -> MemberStatus | None:
        member = self.pool.serf.member(name)
        return None if member is None else member.status


async def start_ours(
    nursery: trio.Nursery,
    name: str,
    keyring: Keyring,
    *,
    keyring_file: str = "",
    answer_queries: bool = True,
) -> OurNode:
    """A memberlist and a pool on a free port; runs until its scope is cancelled, or until
    the pool asks to shut down (as the agent is to do)."""
    log = CaptureLog()
    port = free_port()
    pool = GossipPool(
        "lan",
        SerfConfig(
            node_name=name,
            tags={"kind": "ours", "id": name},
            gossip_interval=0.2,
            keyring_file=keyring_file,
        ),
        logger=log,
        keyring=keyring,
        rng=random.Random(port),
    )
    memberlist = Memberlist(
        MemberlistConfig(name=name, bind=GossipAddress("127.0.0.1", port), keyring=keyring),
        pool.delegate,
        pool.delegate,
        log,
        UdpTcpTransport(),
        random.Random(port),
        conflict=pool.delegate,
    )
    pool.attach(memberlist)
    node = OurNode(name, pool, memberlist, log, port, trio.CancelScope())

    async def run(task_status: trio.TaskStatus[None]) -> None:
        try:
            with node.scope:
                async with trio.open_nursery() as inner:
                    await inner.start(memberlist.run)
                    await inner.start(pool.run)
                    inner.start_soon(listen)
                    task_status.started()
                    await pool.shutdown_requested.wait()
                    inner.cancel_scope.cancel()
        finally:
            node.stopped.set()

    async def listen() -> None:
        async with pool.subscribe() as events:
            async for event in events:
                if isinstance(event, UserEventReceived):
                    node.events.append(event)
                elif isinstance(event, QueryReceived) and answer_queries:
                    await pool.respond(event.handle, f"{event.name} from {name}".encode())

    await nursery.start(run)
    return node


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


async def all_alive(serfs: list[SerfNode], ours: list[OurNode]) -> bool:
    names = {node.name for node in serfs} | {node.name for node in ours}
    for serf in serfs:
        members = await serf.members()
        if {n for n, m in members.items() if m["status"] == "alive"} != names:
            return False
    return all(node.status_of(n) is MemberStatus.ALIVE for node in ours for n in names)


async def form_cluster(serfs: list[SerfNode], ours: list[OurNode]) -> None:
    """Each node joins every node before it (ours1, serf's nodes, then the rest of ours):
    go1 joins ours1, go2 joins ours1 and go1, ours2 joins those three, and so on, each with
    one encrypted push/pull per address (``serf join A B C``, our pool's join of a list), in
    both directions between the two kinds. Every pair has then exchanged its state directly,
    so every node knows every other when the joins return; the wait is for nothing else
    than each node to list them all alive, which a broken join, push/pull, key or a false
    suspicion still fails.

    One seed per joiner is not enough to ask this in 20 s: the others then learn a newcomer
    only from gossip, and memberlist sends each alive message 4 times (``RetransmitMult`` 4
    below 10 nodes), to random peers, from each node that learns it. When the joins come
    within 50 ms of each other, every holder of a newcomer's alive message can spend those
    4 sends before it has heard of one late node (seen: ours2 never reached go2; go1, a real
    serf, had spent its 4 on the others too). Only the periodic push/pull (30 s, staggered)
    repairs that; it took 35 to 47 s, in 3 of 93 runs on an idle machine."""
    order: list[SerfNode | OurNode] = [ours[0], *serfs, *ours[1:]]
    for index in range(1, len(order)):
        node = order[index]
        earlier = [other.address for other in order[:index]]
        if isinstance(node, SerfNode):
            joined = await node.cli("join", *earlier)
            said = (joined.stdout + joined.stderr).decode(errors="replace")
            assert joined.returncode == 0, said
            assert f"by contacting {len(earlier)} nodes" in said, said
        else:
            assert await node.pool.join(earlier) == (len(earlier), "")
    await eventually(lambda: all_alive(serfs, ours))


# --------------------------------------------------------------------------------------------
# Events and queries.


async def test_events_and_queries_cross_a_mixed_encrypted_cluster(
    serf_binary: str, tmp_path: Path
) -> None:
    key = new_key()
    keyring = Keyring.from_base64(key)
    async with (
        serf_node(serf_binary, "go1", tmp_path, key) as go1,
        serf_node(serf_binary, "go2", tmp_path, key) as go2,
        trio.open_nursery() as nursery,
    ):
        ours = [await start_ours(nursery, f"ours{i}", keyring) for i in (1, 2, 3)]
        serfs = [go1, go2]
        await form_cluster(serfs, ours)

        # `serf event` x10 from a serf node: every node, each event once.
        for index in range(10):
            sent = await go1.cli("event", "-coalesce=false", f"ev{index}", f"p{index}")
            assert sent.returncode == 0, sent.stderr
        expected = sorted(f"ev{index} p{index}" for index in range(10))

        async def everyone_has_them() -> bool:
            if sorted(go2.events()) != expected or sorted(go1.events()) != expected:
                return False
            return all(
                sorted(f"{e.name} {e.payload.decode()}" for e in node.events) == expected
                for node in ours
            )

        await eventually(everyone_has_them)
        # And ours reach serf's nodes.
        await ours[1].pool.user_event("from-ours", b"hello")
        await eventually(lambda: _async(all("from-ours hello" in serf.events() for serf in serfs)))

        # `serf query`: acks from every node, responses from ours and from serf's handlers.
        names = ["go1", "go2", "ours1", "ours2", "ours3"]
        answers = await go2.query("-timeout=3s", "who", "", acks=names)
        responses = answers["Responses"]
        assert isinstance(responses, dict)
        assert responses["ours1"] == "who from ours1"
        assert responses["go1"].strip() == "who from go1"
        assert sorted(responses) == names
        # With a tag filter, only the matching nodes.
        await go1.query("-timeout=2s", "-tag", "kind=our.", "w", acks=["ours1", "ours2", "ours3"])

        # Serf's internal `_serf_ping` from a serf node: every node acks it, ours included,
        # and nobody responds (serf's handler for it answers nothing but the ack).
        pinged = await go1.query("-timeout=2s", "_serf_ping", acks=names)
        assert pinged["Responses"] == {}

        # Our query: acks and responses from serf's nodes too (relayed as well).
        items = []
        async with ours[2].pool.query("who", request_ack=True, relay_factor=1, timeout=3) as q:
            async for item in q:
                items.append(item)
        assert sorted(i.from_node for i in items if isinstance(i, QueryAck)) == names
        replies = {i.from_node: i.payload for i in items if isinstance(i, QueryReply)}
        assert sorted(replies) == names
        assert replies["go2"].strip() == b"who from go2"

        # Serf's internal queries from our side: _serf_ping acked, _serf_conflict answered.
        async with ours[0].pool.query(
            "_serf_ping", request_ack=True, filter_nodes=["go1", "go2"], timeout=2
        ) as q:
            acks = sorted({i.from_node async for i in q if isinstance(i, QueryAck)})
        assert acks == ["go1", "go2"]
        local = ours[0].pool.serf.local_member()
        assert local is not None
        vote = ConflictVote(local.addr, local.port)
        async with ours[1].pool.query("_serf_conflict", b"ours1", timeout=2) as q:
            async for item in q:
                if isinstance(item, QueryReply):
                    assert vote.add(item.payload) is None
        # Everyone but ours1 answers, and all see ours1 where it is.
        assert (vote.matching, vote.responses) == (4, 4)
        nursery.cancel_scope.cancel()


async def test_serf_events_cross_between_serf_nodes_only_through_ours(
    serf_binary: str, tmp_path: Path
) -> None:
    """The issue's layout, 2 serf + 6 ours, encrypted, where the two serf nodes cannot talk to
    each other at all: go1 encrypts with key A, go2 with key B, and neither holds the other's
    (each holds A or B as primary, and P); ours encrypt with P and hold all three. Every
    packet from one serf node to the other is dropped undecrypted, so each event reaches the
    other serf node only if one of ours relayed it."""
    a, b, p = new_key(), new_key(), new_key()
    keyring = Keyring.from_base64(p, [a, b])
    files = {}
    for name, first in (("go1", a), ("go2", b)):
        files[name] = tmp_path / f"{name}.keyring"
        files[name].write_text(json.dumps([first, p]))  # serf: the first key is the primary
    async with (
        serf_node(serf_binary, "go1", tmp_path, "", f"-keyring-file={files['go1']}") as go1,
        serf_node(serf_binary, "go2", tmp_path, "", f"-keyring-file={files['go2']}") as go2,
        trio.open_nursery() as nursery,
    ):
        ours = [await start_ours(nursery, f"ours{i}", keyring) for i in range(1, 7)]
        for index in range(1, len(ours)):
            earlier = [node.address for node in ours[:index]]
            assert await ours[index].pool.join(earlier) == (len(earlier), "")
        # The serf nodes are strangers to each other: a direct join fails on the keys.
        refused = await go2.cli("join", go1.address)
        assert refused.returncode != 0
        assert b"No installed keys could decrypt the message" in refused.stdout + refused.stderr
        for serf in (go1, go2):  # each joins ours only
            joined = await serf.cli("join", *(node.address for node in ours))
            assert joined.returncode == 0, joined.stdout + joined.stderr
        serfs = [go1, go2]

        async def formed() -> bool:
            # Ours see everyone alive, and each serf node sees ours alive. How the two serf
            # nodes see each other is left out: they can only probe each other indirectly
            # (through ours), so on a loaded machine one may suspect the other for a while,
            # which does not stop the events this test is about.
            ours_names = {node.name for node in ours}
            for serf in serfs:
                alive = {n for n, m in (await serf.members()).items() if m["status"] == "alive"}
                if not ours_names <= alive:
                    return False
            names = ours_names | {serf.name for serf in serfs}
            return all(node.status_of(n) is MemberStatus.ALIVE for node in ours for n in names)

        await eventually(formed, seconds=60)

        for index in range(10):
            sent = await go1.cli("event", "-coalesce=false", f"relayed{index}", f"p{index}")
            assert sent.returncode == 0, sent.stderr
        expected = sorted(f"relayed{index} p{index}" for index in range(10))

        async def everyone_has_them() -> bool:
            if sorted(go2.events()) != expected:
                return False
            return all(
                sorted(f"{e.name} {e.payload.decode()}" for e in node.events) == expected
                for node in ours
            )

        # Usually well under a second; an event whose gossip missed a node comes with the next
        # push/pull (every 30 s), so the bound is above that.
        await eventually(everyone_has_them, seconds=75)
        # 10/10 on go2, each exactly once (sorted equality above), through ours alone; and
        # go1's own packets to go2 were refused, as the keys say.
        assert sorted(go1.events()) == expected
        assert b"No installed keys could decrypt the message" in go2.output
        nursery.cancel_scope.cancel()


async def _async(value: bool) -> bool:
    return value


# --------------------------------------------------------------------------------------------
# Keys.


def _listed_keys(output: bytes) -> dict[str, str]:
    """``serf keys -list`` lines (``KEY  [n/m]``) as a mapping."""
    keys = {}
    for line in output.decode().splitlines():
        match = re.fullmatch(r"(\S+)\s+(\[\d+/\d+\])", line.strip())
        if match:
            keys[match.group(1)] = match.group(2)
    return keys


async def test_serf_keys_rotate_a_mixed_encrypted_cluster(serf_binary: str, tmp_path: Path) -> None:
    old, new = new_key(), new_key()
    keyring = Keyring.from_base64(old)
    async with (
        serf_node(serf_binary, "go1", tmp_path, old) as go1,
        serf_node(serf_binary, "go2", tmp_path, old) as go2,
        trio.open_nursery() as nursery,
    ):
        files = [tmp_path / f"ours{i}" / "serf" / "local.keyring" for i in (1, 2, 3)]
        ours = [
            await start_ours(nursery, f"ours{i}", keyring, keyring_file=str(files[i - 1]))
            for i in (1, 2, 3)
        ]
        serfs = [go1, go2]
        await form_cluster(serfs, ours)

        listed = await go1.cli("keys", "-list")
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert _listed_keys(listed.stdout) == {old: "[5/5]"}

        for flag, text in (("-install", "Successfully installed key!"),
                           ("-use", "Successfully changed primary key!")):  # fmt: skip
            done = await go2.cli("keys", f"{flag}={new}")
            assert done.returncode == 0, done.stdout + done.stderr
            assert text in done.stdout.decode()
        assert _listed_keys((await go1.cli("keys", "-list")).stdout) == {
            old: "[5/5]",
            new: "[5/5]",
        }
        # The primary moved on our nodes; their keyring files follow every change.
        for node, path in zip(ours, files, strict=True):
            assert node.memberlist.keyring is not None
            assert node.memberlist.keyring.primary_key == base64.b64decode(new)
            on_disk = await load_keyring(path)
            assert on_disk is not None and on_disk.keys == node.memberlist.keyring.keys
            assert path.stat().st_mode & 0o777 == 0o600

        # Ours removes the old key from everyone (serf nodes included).
        removed = await ours[0].pool.remove_key(old)
        assert (removed.error, removed.num_nodes, removed.num_resp) == ("", 5, 5)
        listing = await ours[1].pool.list_keys()
        assert listing.error == ""
        assert listing.keys == {new: 5}
        assert listing.primary_keys.get(new, 0) >= 3  # serf 0.8 does not report its primary
        assert _listed_keys((await go2.cli("keys", "-list")).stdout) == {new: "[5/5]"}
        for path in files:
            on_disk = await load_keyring(path)
            assert on_disk is not None and on_disk.keys == (base64.b64decode(new),)

        # Removing the primary fails on every node, with memberlist's text.
        refused = await go1.cli("keys", f"-remove={new}")
        assert refused.returncode != 0
        said = (refused.stdout + refused.stderr).decode()
        assert "Error removing key: 5/5 nodes reported failure" in said
        for name in ("go1", "ours1", "ours3"):
            assert re.search(rf"{name}\s+Removing the primary key is not allowed", said), said

        # Gossip still flows under the new key alone.
        await ours[2].pool.user_event("after-rotation", b"")
        await eventually(lambda: _async(all("after-rotation " in serf.events() for serf in serfs)))
        assert await all_alive(serfs, ours)
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------------------------
# Name conflicts.


async def test_a_serf_node_taking_our_name_loses_the_vote(serf_binary: str, tmp_path: Path) -> None:
    key = new_key()
    keyring = Keyring.from_base64(key)
    async with (
        serf_node(serf_binary, "go1", tmp_path, key) as go1,
        trio.open_nursery() as nursery,
    ):
        ours = [await start_ours(nursery, f"ours{i}", keyring) for i in (1, 2)]
        await form_cluster([go1], ours)
        async with serf_node(serf_binary, "ours1", tmp_path, key) as impostor:
            joined = await impostor.cli("join", ours[1].address)
            assert joined.returncode == 0
            # Serf's own resolution: the newcomer is in the minority and its agent exits.
            with trio.move_on_after(20):
                await impostor.process.wait()
            said = impostor.output.decode(errors="replace")
            assert "minority in name conflict resolution, quitting [0 / 2]" in said, said
            assert impostor.process.returncode is not None, said
        # Its two answers were ours2's and go1's: ours2 saw the conflict and answered.
        assert ours[1].log.has("Name conflict for 'ours1' both 127.0.0.1:")
        assert ours[1].log.has("Got conflict resolution query for 'ours1'")
        # As in a serf-only cluster, nothing changes for the original.
        assert not ours[0].pool.shutdown_requested.is_set()
        assert (await go1.members())["ours1"]["addr"] == ours[0].address
        assert await all_alive([go1], ours)
        nursery.cancel_scope.cancel()


async def test_our_node_taking_a_serf_nodes_name_loses_the_vote(
    serf_binary: str, tmp_path: Path
) -> None:
    key = new_key()
    keyring = Keyring.from_base64(key)
    async with (
        serf_node(serf_binary, "go1", tmp_path, key) as go1,
        serf_node(serf_binary, "go2", tmp_path, key) as go2,
        trio.open_nursery() as nursery,
    ):
        ours = [await start_ours(nursery, "ours1", keyring)]
        await form_cluster([go1, go2], ours)
        impostor = await start_ours(nursery, "go1", keyring)
        await impostor.pool.join([ours[0].address])
        with trio.fail_after(20):
            await impostor.stopped.wait()
        assert impostor.pool.shutdown_requested.is_set()
        assert impostor.log.has("minority in name conflict resolution, quitting [0 / 2]")
        # The real go1 keeps its name and address everywhere.
        assert (await go2.members())["go1"]["addr"] == f"127.0.0.1:{go1.port}"
        assert go1.process.returncode is None
        assert await all_alive([go1, go2], ours)
        nursery.cancel_scope.cancel()
