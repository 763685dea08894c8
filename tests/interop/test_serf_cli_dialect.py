"""The real ``serf`` CLI (/usr/bin/serf) and a PyPI Serf client (``serfclient``) against our
agent's Serf-dialect listener (``serf_rpc_addr``), over real loopback sockets: members, tags,
event, query (acks and a response), keys (a whole rotation), monitor, rtt, join, force-leave
and leave; and ``serf rtt`` between a real serf node and ours, through either agent, giving a
finite estimate from the coordinates our pings carried (and ``agentrpc rtt`` the same, against
the real serf agent too). ``agentrpc query`` on a mixed cluster (a serf agent answering through
its handler, ours through a stream): responses, ``--node``, ``--tag``, ``--no-ack`` and
``--relay-factor``."""

from __future__ import annotations

import io
import json
import math
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from process_helpers import free_port
from rpc_helpers import NO_HTTP_NO_DNS

from agentrpc.agent import Agent
from agentrpc.client import SerfClient
from agentrpc.config import load_config

pytestmark = pytest.mark.serf

CLI = [sys.executable, "-m", "agentrpc.cli"]
HANDLER = """#!/bin/sh
# serf's event handler: a query is answered on stdout.
if [ "$SERF_EVENT" = "query" ]; then
  cat > /dev/null
  echo "$SERF_QUERY_NAME from $SERF_SELF_NAME"
fi
"""
KEY1 = "cg8StVXbQJ0gPvMd9o7yrg=="
KEY2 = "4le2xwSQgNTAB6Ucyh6Vjw=="


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 20) -> None:
    """Poll a condition about real processes: bounded, every 100 ms."""
    with trio.fail_after(seconds):
        while not await check():  # noqa: ASYNC110 - real processes: nothing to wait on
            await trio.sleep(0.1)


@asynccontextmanager
async def our_agent(name: str, tmp_path: Path, **settings: Any) -> AsyncIterator[Agent]:
    """Our agent on real sockets, its Serf RPC listener on a free loopback port."""
    overrides = {
        "node_name": name,
        "rpc_addr": "127.0.0.1:0",
        "serf_lan_addr": f"127.0.0.1:{free_port()}",
        "serf_wan_addr": f"127.0.0.1:{free_port()}",
        "server_addr": "127.0.0.1:0",
        "serf_rpc_addr": f"127.0.0.1:{free_port()}",
        "log_level": "DEBUG",
        **NO_HTTP_NO_DNS,
        **settings,
    }
    agent = Agent(load_config((), overrides), overrides=overrides, log_sink=io.StringIO())
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        try:
            yield agent
        finally:
            agent.shutdown()


def serf_addr(agent: Agent) -> str:
    return str(agent.serf_rpc_addresses[0])


async def serf(binary: str, command: str, rpc_addr: str, *args: str) -> tuple[int, str, str]:
    done = await trio.run_process(
        [binary, command, f"-rpc-addr={rpc_addr}", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_the_serf_cli_drives_our_agent(serf_binary: str, tmp_path: Path) -> None:
    async with (
        our_agent("ours1", tmp_path, encrypt=KEY1) as agent,
        our_agent("ours2", tmp_path, encrypt=KEY1) as other,
    ):
        rpc = serf_addr(agent)
        code, out, err = await serf(serf_binary, "members", rpc)
        assert code == 0, err
        (row,) = out.splitlines()
        assert row.split()[:3] == ["ours1", str(agent.gossip_addresses["lan"]), "alive"]

        # join (through our listener) and members -format=json with serf's filters
        other_lan = str(other.gossip_addresses["lan"])
        code, out, err = await serf(serf_binary, "join", rpc, other_lan)
        assert (code, out.strip()) == (0, "Successfully joined cluster by contacting 1 nodes."), err

        async def both_alive() -> bool:
            code, out, _ = await serf(serf_binary, "members", rpc, "-format=json")
            members = json.loads(out)["members"] if code == 0 else []
            return sorted(m["name"] for m in members if m["status"] == "alive") == [
                "ours1",
                "ours2",
            ]

        await eventually(both_alive)
        code, out, _ = await serf(serf_binary, "members", rpc, "-name=ours2", "-format=json")
        assert [m["name"] for m in json.loads(out)["members"]] == ["ours2"]

        # tags
        code, out, err = await serf(serf_binary, "tags", rpc, "-set", "rack=r1", "-delete", "vsn")
        assert (code, out.strip()) == (0, "Successfully updated agent tags"), err

        async def tagged() -> bool:
            _, out, _ = await serf(serf_binary, "members", serf_addr(other), "-format=json")
            tags = {m["name"]: m["tags"] for m in json.loads(out)["members"]}
            return tags.get("ours1", {}).get("rack") == "r1" and "vsn" not in tags["ours1"]

        await eventually(tagged)

        # event: reaches the other agent
        async with SerfClient(serf_addr(other)) as client, client.stream("user") as events:
            code, out, err = await serf(serf_binary, "event", rpc, "deploy", "v42")
            assert code == 0, err
            assert out.strip() == "Event 'deploy' dispatched! Coalescing enabled: true"
            with trio.fail_after(10):
                record = await events.__anext__()
            assert (record["Name"], record["Payload"]) == ("deploy", b"v42")

        # query: acks from both, a response from the other agent's stream
        async with SerfClient(serf_addr(other)) as client, client.stream("query") as queries:

            async def answer() -> None:
                record = await queries.__anext__()
                await client.respond(record["ID"], b"pong")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer)
                code, out, err = await serf(serf_binary, "query", rpc, "-timeout=3s", "ping")
            assert code == 0, err
            lines = out.splitlines()
            assert lines[0] == "Query 'ping' dispatched"
            assert {"Ack from 'ours1'", "Ack from 'ours2'"} <= set(lines)
            assert "Response from 'ours2': pong" in lines
            assert lines[-2:] == ["Total Acks: 2", "Total Responses: 1"]

        # keys: list, install, use, remove; the rotation ends with both nodes on the new key
        code, out, err = await serf(serf_binary, "keys", rpc, "-list")
        assert code == 0, err
        assert re.search(rf"{re.escape(KEY1)}\s+\[2/2\]", out), out
        for args in (("-install", KEY2), ("-use", KEY2), ("-remove", KEY1)):
            code, out, err = await serf(serf_binary, "keys", rpc, *args)
            assert code == 0, (args, out, err)
        code, out, err = await serf(serf_binary, "keys", serf_addr(other), "-list")
        assert code == 0, err
        assert re.search(rf"{re.escape(KEY2)}\s+\[2/2\]", out) and KEY1 not in out, out
        code, out, err = await serf(serf_binary, "keys", rpc, "-remove", KEY2)
        assert code == 1
        assert "Error removing key: 2/2 nodes reported failure" in out + err

        # rtt: our own coordinate, and the peer's once a ping carried it
        code, out, err = await serf(serf_binary, "rtt", rpc, "ours1")
        assert code == 0, err
        assert re.fullmatch(r"Estimated ours1 <-> ours1 rtt: \d+\.\d{3} ms", out.strip())

        async def rtt_known() -> bool:
            code, _, _ = await serf(serf_binary, "rtt", rpc, "ours2")
            return code == 0

        await eventually(rtt_known, 30)
        code, out, err = await serf(serf_binary, "rtt", rpc, "nobody")
        assert code == 1 and 'Could not find a coordinate for node "nobody"' in out + err

        # monitor: streams our log until interrupted
        process = await trio.lowlevel.open_process(
            [serf_binary, "monitor", f"-rpc-addr={rpc}", "-log-level=debug"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert process.stdout is not None
        seen = b""
        try:
            with trio.fail_after(10):
                while b"agent.ipc" not in seen:
                    chunk = await process.stdout.receive_some(65536)
                    assert chunk, seen
                    seen += chunk
        finally:
            process.send_signal(signal.SIGINT)
            with trio.move_on_after(5):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()

        # force-leave and leave: the other agent leaves through its own listener
        code, out, err = await serf(serf_binary, "leave", serf_addr(other))
        assert code == 0, err
        assert "Graceful leave complete" in out
        with trio.fail_after(20):
            await other.wait_stopped()

        async def left() -> bool:
            _, out, _ = await serf(serf_binary, "members", rpc, "-format=json")
            status = {m["name"]: m["status"] for m in json.loads(out)["members"]}
            return status.get("ours2") == "left"

        await eventually(left, 30)
        code, out, err = await serf(serf_binary, "force-leave", rpc, "ours2")
        assert code == 0, err


async def agentrpc(*args: str) -> tuple[int, str, str]:
    """Our CLI, to completion (30 s at most)."""
    with trio.fail_after(30):
        done = await trio.run_process(
            [*CLI, *args], capture_stdout=True, capture_stderr=True, check=False
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@asynccontextmanager
async def serf_agent(binary: str, name: str, *extra: str) -> AsyncIterator[tuple[int, str]]:
    """A real serf agent on free loopback ports, until the block ends: its gossip port and
    its RPC address. Its output is drained while it runs."""
    port = free_port()
    rpc = f"127.0.0.1:{free_port()}"
    argv = [binary, "agent", f"-node={name}", f"-bind=127.0.0.1:{port}", f"-rpc-addr={rpc}"]
    process = await trio.lowlevel.open_process(
        [*argv, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    stream = process.stdout
    assert stream is not None
    try:
        seen = b""
        with trio.fail_after(20):
            while b"Serf agent running" not in seen:
                chunk = await stream.receive_some(65536)
                assert chunk, seen
                seen += chunk
        async with trio.open_nursery() as nursery:

            async def drain() -> None:
                while await stream.receive_some(65536):
                    pass

            nursery.start_soon(drain)
            yield port, rpc
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(5):
            await process.wait()


async def test_agentrpc_query_and_its_filters_on_a_mixed_cluster(
    serf_binary: str, tmp_path: Path
) -> None:
    """``agentrpc query`` through our agent's Serf listener, on ours1, ours2 (which answers
    through a Serf stream) and a real serf agent go1 (which answers through its handler):
    responses, ``--node``, ``--tag``, ``--no-ack`` and ``--relay-factor``."""
    handler = tmp_path / "handler.sh"
    handler.write_text(HANDLER)
    handler.chmod(0o755)
    async with (
        serf_agent(serf_binary, "go1", f"-event-handler={handler}", "-tag", "kind=go") as go1,
        our_agent("ours1", tmp_path) as agent,
        our_agent("ours2", tmp_path) as other,
        SerfClient(serf_addr(other)) as client,
        client.stream("query") as queries,
        trio.open_nursery() as nursery,
    ):

        async def answer() -> None:
            async for record in queries:
                await client.respond(record["ID"], f"{record['Name']} from ours2".encode())

        nursery.start_soon(answer)
        rpc = serf_addr(agent)
        joined = [f"127.0.0.1:{go1[0]}", str(other.gossip_addresses["lan"])]
        code, out, err = await serf(serf_binary, "join", rpc, *joined)
        assert code == 0, out + err

        async def all_alive() -> bool:
            code, out, _ = await serf(serf_binary, "members", go1[1], "-format=json")
            members = json.loads(out)["members"] if code == 0 else []
            alive = sorted(m["name"] for m in members if m["status"] == "alive")
            return alive == ["go1", "ours1", "ours2"]

        await eventually(all_alive)
        addr = ["--serf-rpc-addr", rpc]

        # Acks from all three; responses from go1's handler and ours2's stream, printed as
        # they come, then serf's totals.
        code, out, err = await agentrpc("query", "who", "--query-timeout", "3s", *addr)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == "Query 'who' dispatched"
        assert lines[-2:] == ["Total Acks: 3", "Total Responses: 2"]
        assert sorted(lines[1:-2]) == [
            "Ack from 'go1'",
            "Ack from 'ours1'",
            "Ack from 'ours2'",
            "Response from 'go1': who from go1",
            "Response from 'ours2': who from ours2",
        ]

        # --node: only the named nodes ack and answer (serf's own node filter, on go1 too).
        code, out, err = await agentrpc(
            "query", "who", "--node", "ours2", "--node", "ours1", "--query-timeout=2s", "--json",
            *addr,
        )  # fmt: skip
        assert code == 0, err
        named = json.loads(out)
        assert sorted(named["Acks"]) == ["ours1", "ours2"]
        assert named["Responses"] == {"ours2": "who from ours2"}

        # --tag: a regular expression on a tag; only go1 carries kind=go.
        code, out, err = await agentrpc(
            "query", "who", "--tag", "kind=^g.$", "--query-timeout=2s", "--json", *addr
        )
        assert code == 0, err
        assert json.loads(out) == {"Acks": ["go1"], "Responses": {"go1": "who from go1\n"}}

        # --no-ack: no ack asked for nor printed, the responses still come.
        code, out, err = await agentrpc("query", "who", "--no-ack", "--query-timeout=2s", *addr)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == "Query 'who' dispatched"
        assert lines[-1] == "Total Responses: 2"
        assert not any(line.startswith(("Ack from", "Total Acks")) for line in lines), out
        assert sorted(lines[1:-1]) == [
            "Response from 'go1': who from go1",
            "Response from 'ours2': who from ours2",
        ]

        # --relay-factor: each answer also comes relayed through other nodes, and is still
        # counted once per node; out of range is refused before dialling.
        code, out, err = await agentrpc(
            "query", "who", "--relay-factor", "2", "--query-timeout=3s", "--json", *addr
        )
        assert code == 0, err
        relayed = json.loads(out)
        assert sorted(relayed["Acks"]) == ["go1", "ours1", "ours2"]
        assert relayed["Responses"] == {"go1": "who from go1\n", "ours2": "who from ours2"}
        code, _, err = await agentrpc("query", "who", "--relay-factor", "256", *addr)
        assert code == 1 and "Relay factor must be between 0 and 255" in err
        nursery.cancel_scope.cancel()


async def test_serf_auth_and_a_pypi_client(serf_binary: str, tmp_path: Path) -> None:
    serfclient = pytest.importorskip("serfclient")
    async with our_agent("ours1", tmp_path, serf_rpc_auth="s3cret") as agent:
        rpc = serf_addr(agent)
        code, out, err = await serf(serf_binary, "members", rpc)
        assert code == 1 and "Authentication required" in out + err
        code, out, err = await serf(serf_binary, "members", rpc, "-rpc-auth=s3cret")
        assert code == 0 and out.startswith("ours1"), err
    async with our_agent("ours1", tmp_path) as agent:
        address = agent.serf_rpc_addresses[0]

        def drive() -> dict[str, Any]:
            client = serfclient.SerfClient(host=address.host, port=address.port, timeout=5)
            try:
                seen: dict[str, Any] = {
                    "members": client.members().body,
                    "filtered": client.members(name="ours.*", status="alive").body,
                    "none": client.members(tags={"role": "nothing"}).body,
                    "stats": client.stats().body,
                    "event": client.event("deploy", b"v1").head,
                    "join": client.join("127.0.0.1:1").head,
                }
                stream = client.stream("user")
                seen["stream"] = stream.head
                other = serfclient.SerfClient(host=address.host, port=address.port, timeout=5)
                other.event("again", b"v2", coalesce=False)
                other.close()
                for record in stream.body:
                    seen["record"] = record.body
                    break
                return seen
            finally:
                client.close()

        with trio.fail_after(30):
            seen = await trio.to_thread.run_sync(drive)
        assert [m["Name"] for m in seen["members"]["Members"]] == ["ours1"]
        assert [m["Name"] for m in seen["filtered"]["Members"]] == ["ours1"]
        assert seen["none"] == {"Members": []}
        assert seen["stats"]["agent"] == {"name": "ours1"}
        assert seen["event"]["Error"] == ""
        assert seen["join"]["Error"].startswith("1 error(s) occurred")
        assert seen["stream"]["Error"] == ""
        record = seen["record"]
        assert (record["Event"], record["Name"], record["Payload"]) == ("user", "again", b"v2")
        assert record["Coalesce"] is False


async def test_serf_rtt_between_a_serf_node_and_ours(serf_binary: str, tmp_path: Path) -> None:
    port = free_port()
    rpc = f"127.0.0.1:{free_port()}"
    argv = [serf_binary, "agent", "-node=go1", f"-bind=127.0.0.1:{port}", f"-rpc-addr={rpc}"]
    process = await trio.lowlevel.open_process(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert process.stdout is not None
    try:
        seen = b""
        with trio.fail_after(20):
            while b"Serf agent running" not in seen:
                chunk = await process.stdout.receive_some(65536)
                assert chunk, seen
                seen += chunk
        async with trio.open_nursery() as nursery:

            async def drain() -> None:
                assert process.stdout is not None
                while await process.stdout.receive_some(65536):
                    pass

            nursery.start_soon(drain)
            async with our_agent("ours1", tmp_path) as agent:
                ours = serf_addr(agent)
                code, _, err = await serf(serf_binary, "join", ours, f"127.0.0.1:{port}")
                assert code == 0, err

                async def estimated(through: str, node: str) -> bool:
                    code, _, _ = await serf(serf_binary, "rtt", through, node)
                    return code == 0

                # Through our agent (its cache of go1's coordinate) and through serf's (ours).
                await eventually(lambda: estimated(ours, "go1"), 40)
                await eventually(lambda: estimated(rpc, "ours1"), 40)
                for through, node in ((ours, "go1"), (rpc, "ours1")):
                    code, out, err = await serf(serf_binary, "rtt", through, node)
                    match = re.fullmatch(r"Estimated \S+ <-> \S+ rtt: (\d+\.\d+) ms", out.strip())
                    assert match is not None, out + err
                    assert math.isfinite(float(match.group(1)))
                # Our CLI between the two nodes, against the real serf agent's RPC (it reads
                # both coordinates there) and against ours.
                for through, first, second in ((rpc, "go1", "ours1"), (ours, "ours1", "go1")):
                    code, out, err = await agentrpc(
                        "rtt", first, second, "--serf-rpc-addr", through
                    )
                    assert code == 0, err
                    pattern = rf"Estimated {first} <-> {second} rtt: (\d+\.\d{{3}}) ms"
                    match = re.fullmatch(pattern, out.strip())
                    assert match is not None, out + err
                    assert math.isfinite(float(match.group(1)))
                code, out, err = await agentrpc("rtt", "go1", "nobody", "--serf-rpc-addr", rpc)
                assert code == 1 and "nobody" in err, out + err
                # And our Python client's estimate agrees with serf's arithmetic.
                async with SerfClient(ours) as client:
                    seconds = await client.rtt("go1", "ours1")
                assert math.isfinite(seconds) and seconds > 0
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(5):
            await process.wait()
