"""The long fault run of real server processes: rounds of ``kill -9`` of one or two servers of a
3- or 5-server cluster at random moments under concurrent writes, restarts on the same
``data_dir``, and checks after every round.

    .venv/bin/python scripts/raft_crash_loop.py --minutes 10 --servers 3 5 \\
        --output benchmarks/results/2026-12-03-raft-crash-loop/report.md

Each round, on a running cluster (``tests/cluster/cluster_support.py``: ``agentrpc serve``
processes on their own 127.0.0.x addresses, ``raft_multiplier`` 1, small snapshot settings so
that snapshots, compaction and InstallSnapshot happen):

1. writers put unique keys ``crash/<round>/<writer>/<seq>`` to random live servers (each
   write recorded acknowledged, or indeterminate when it failed or was cut); register clients
   run ``set`` (unique values) and consistent ``get`` on a few keys ``reg/<round>/<k>``, each
   operation recorded with its invocation and completion times;
2. after a random delay, one or two servers (the leader in half the rounds) are killed with
   SIGKILL, together or a moment apart; with a quorum left, the time to a new leader that takes
   writes is measured; after a random down time they are restarted on their data_dir;
3. once every server names one leader and the clients stopped: every server's own copy of the
   round's keys holds every acknowledged write and nothing never written (and all copies are
   equal), the register histories (with a final consistent read) are **linearizable** (the
   checker of ``tests/raft/linearizability.py``), the keys of older rounds are still whole on
   every server, and a round that was deleted (delete-tree, acknowledged) stays empty.

The state is kept small by deleting rounds older than ``--keep``. Exits 1 at the first
violation, with the servers' log tails in the report and the data left in place. Every kill
time, victim choice and delay comes from ``--seed``; the processes' timing does not.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "cluster"), str(ROOT / "tests" / "raft"), str(ROOT)]

from cluster_support import (  # noqa: E402
    CallErrors,
    Cluster,
    ClusterError,
    Server,
    WriteLog,
    call,
    error_kinds,
    error_lines_of,
    known_noise,
    kv_apply,
    kv_get,
    kv_list,
    wait_converged,
    writer,
)
from linearizability import GET, SET, Operation, check_history  # noqa: E402

SNAPSHOT_CONFIG: dict[str, Any] = {
    "raft_snapshot_threshold": 1024,
    "raft_snapshot_interval": "2s",
    "raft_trailing_logs": 512,
}
"""Small enough that a server down for a few seconds of writes is sent a snapshot."""
NEW_LEADER_LIMIT = 30.0
"""A kill with a quorum left and no leader after this long is a hang (reported)."""
RECOVERY_LIMIT = 60.0


@dataclass
class Totals:
    """What a run did, summed over its rounds."""

    servers: int = 0
    rounds: int = 0
    kills: int = 0
    leader_kills: int = 0
    double_kills: int = 0
    quorum_lost_rounds: int = 0
    writes_acked: int = 0
    writes_indeterminate: int = 0
    writes_lost: int = 0
    register_ops: int = 0
    register_indeterminate: int = 0
    linearizability_violations: int = 0
    deleted_rounds_checked: int = 0
    elections: list[float] = field(default_factory=list)
    recoveries: list[float] = field(default_factory=list)
    snapshots: int = 0
    voters_added: int = 0
    """``consul: added Raft voter`` lines: servers (re)added by a leader."""
    autopilot_removals: int = 0
    """Dead servers removed by a leader's autopilot (a minority failed long enough)."""
    interrupted: bool = False
    error_kinds: dict[str, int] = field(default_factory=dict)
    """The servers' ``[ERR]`` lines that are no failure (see FATAL_TOPICS), by kind."""
    raft_byte_refusals: int = 0
    """``unrecognized RPC byte: byte=1`` lines (a known start-up window, see KNOWN_NOISE)."""
    seconds: float = 0.0
    failure: str = ""


class RoundFailure(Exception):
    """A check failed: acknowledged data lost, a history not linearizable, or a hang."""


@dataclass
class RegisterClient:
    """One client of one register key: its operations, in order."""

    number: int
    key: str
    consistent: bool = True
    """False (``--inject stale-reads``): reads served by any server's own copy."""
    lie: bool = False
    """True (``--inject failed-as-acked``): a failed set is recorded as completed."""
    ops: list[Operation] = field(default_factory=list)

    async def run(self, live: Any, rng: random.Random) -> None:
        count = 0
        while True:
            servers: Sequence[Server] = live()
            if not servers:
                await trio.sleep(0.05)
                continue
            server = rng.choice(list(servers))
            if rng.random() < 0.5:
                value = f"c{self.number}.{count}"
                count += 1
                invoke = trio.current_time()
                # Recorded as indeterminate first: a cancelled or failed set may still commit.
                self.ops.append(Operation(self.number, SET, self.key, (value,), invoke))
                try:
                    await kv_apply(server, self.key, value.encode(), within=10.0)
                except CallErrors:
                    if self.lie:
                        self.ops[-1] = Operation(
                            self.number, SET, self.key, (value,), invoke, trio.current_time()
                        )
                    await trio.sleep(0.05)
                    continue
                self.ops[-1] = Operation(
                    self.number, SET, self.key, (value,), invoke, trio.current_time()
                )
            else:
                invoke = trio.current_time()
                try:
                    found = await kv_get(server, self.key, consistent=self.consistent)
                except CallErrors:
                    await trio.sleep(0.05)  # a failed read had no effect: left out
                    continue
                result = found.decode() if found is not None else None
                self.ops.append(
                    Operation(
                        self.number,
                        GET,
                        self.key,
                        (),
                        invoke,
                        trio.current_time(),
                        result,
                    )
                )


def prune_unseen_sets(history: list[Operation]) -> list[Operation]:
    """Drop the indeterminate sets whose value no read returned. Sound for a set/get register
    with unique values: in any linearization, no read falls between such a set and the next
    set (it would have returned that value), so taking the set out leaves a valid
    linearization, and "never took effect" is one of its allowed outcomes. Without this the
    search would try every subset of those sets (2^k states)."""
    seen = {(op.key, op.result) for op in history if op.kind == GET and not op.indeterminate}
    return [
        op
        for op in history
        if not (op.kind == SET and op.indeterminate and (op.key, op.args[0]) not in seen)
    ]


async def current_leader(cluster: Cluster) -> Server | None:
    for server in cluster.live:
        try:
            address = await call(server, "Status.Leader", {}, within=2.0)
        except CallErrors:
            continue
        found = cluster.by_address(str(address))
        if found is not None and found.running:
            return found
    return None


async def run_round(
    cluster: Cluster,
    number: int,
    rng: random.Random,
    totals: Totals,
    *,
    writers: int,
    registers: int,
    inject: str,
) -> WriteLog:
    size = len(cluster.servers)
    prefix = f"crash/{number:04d}/"
    log = WriteLog()
    clients = [RegisterClient(i, f"reg/{number:04d}/{i % registers}") for i in range(2 * registers)]

    def live() -> list[Server]:
        return cluster.live

    async with trio.open_nursery() as nursery:
        for i in range(writers):
            nursery.start_soon(
                partial(
                    writer,
                    i,
                    live,
                    log,
                    prefix=prefix,
                    rng=random.Random(rng.random()),
                    lie=inject == "failed-as-acked",
                )
            )
        for client in clients:
            nursery.start_soon(client.run, live, random.Random(rng.random()))

        await trio.sleep(rng.uniform(0.3, 2.5))
        leader = await current_leader(cluster)
        count = rng.choice([1, 1, 2])
        victims: list[Server] = []
        if leader is not None and rng.random() < 0.5:
            victims.append(leader)
        others = [s for s in cluster.servers if s not in victims]
        rng.shuffle(others)
        victims += others[: count - len(victims)]
        if len(victims) == 2 and rng.random() < 0.5:
            await cluster.kill(victims[0])
            await trio.sleep(rng.uniform(0.05, 1.5))
            await cluster.kill(victims[1])
        else:
            await cluster.kill_together(victims)
        totals.kills += len(victims)
        totals.double_kills += len(victims) == 2
        totals.leader_kills += leader in victims
        quorum = size - len(victims) > size // 2
        if not quorum:
            totals.quorum_lost_rounds += 1
        if leader in victims and quorum:
            try:
                _, took = await cluster.wait_leader(cluster.live, within=NEW_LEADER_LIMIT)
            except ClusterError as exc:
                raise RoundFailure(f"round {number}: no new leader after a kill: {exc}") from None
            totals.elections.append(took)
        await trio.sleep(rng.uniform(0.5, 4.0))
        began = trio.current_time()
        for victim in victims:
            await cluster.start(victim)
        try:
            await cluster.wait_started(victims)
            _, _ = await cluster.wait_leader(cluster.servers, within=RECOVERY_LIMIT)
        except ClusterError as exc:
            raise RoundFailure(f"round {number}: no recovery after restarts: {exc}") from None
        totals.recoveries.append(trio.current_time() - began)
        await trio.sleep(rng.uniform(0.5, 2.0))
        nursery.cancel_scope.cancel()

    # The clients stopped: final consistent reads anchor each register's history.
    leader = await current_leader(cluster)
    if leader is None:
        raise RoundFailure(f"round {number}: no leader after the round")
    history: list[Operation] = [op for client in clients for op in client.ops]
    for key in sorted({client.key for client in clients}):
        invoke = trio.current_time()
        try:
            found = await kv_get(leader, key, consistent=True, within=15.0)
        except CallErrors as exc:
            raise RoundFailure(f"round {number}: final read of {key} failed: {exc!r}") from None
        value = found.decode() if found is not None else None
        history.append(Operation(-1, GET, key, (), invoke, trio.current_time(), value))
    totals.register_ops += len(history)
    totals.register_indeterminate += sum(1 for op in history if op.indeterminate)
    try:
        checked = check_history(prune_unseen_sets(history))
    except RuntimeError as exc:  # the search's state bound: undecided, never a silent pass
        raise RoundFailure(f"round {number}: linearizability check undecided: {exc}") from None
    if not checked.ok:
        totals.linearizability_violations += 1
        ops = "\n".join(repr(op) for op in checked.history or ())
        raise RoundFailure(f"round {number}: {checked.key} not linearizable:\n{ops}")

    totals.writes_acked += len(log.acked)
    totals.writes_indeterminate += len(log.indeterminate)
    try:
        await wait_converged(cluster.servers, log, prefix=prefix, within=RECOVERY_LIMIT)
    except ClusterError as exc:
        totals.writes_lost += await count_lost(cluster, log, prefix)
        raise RoundFailure(f"round {number}: {exc}") from None
    return log


async def count_lost(cluster: Cluster, log: WriteLog, prefix: str) -> int:
    """The most acknowledged writes of ``log`` one server's copy lacks."""
    worst = 0
    for server in cluster.servers:
        try:
            copy = await kv_list(server, prefix, within=15.0)
        except CallErrors:
            continue
        worst = max(worst, sum(1 for k, v in log.acked.items() if copy.get(k) != v))
    return worst


async def check_older(
    cluster: Cluster, kept: dict[int, WriteLog], deleted: list[int], totals: Totals
) -> None:
    """Older rounds are still whole on every server; deleted ones stay empty."""
    for number, log in kept.items():
        prefix = f"crash/{number:04d}/"
        for server in cluster.servers:
            copy = await kv_list(server, prefix, within=15.0)
            missing = [k for k, v in log.acked.items() if copy.get(k) != v]
            if missing:
                totals.writes_lost += len(missing)
                raise RoundFailure(
                    f"{server.name} lost {len(missing)} acknowledged writes of round {number} "
                    f"later, e.g. {missing[:5]}"
                )
    for number in deleted:
        for server in cluster.servers:
            # The delete was acknowledged by the leader; a follower's own copy may apply it
            # a moment later, so wait (bounded) for it to be empty.
            deadline = trio.current_time() + RECOVERY_LIMIT
            while copy := await kv_list(server, f"crash/{number:04d}/", within=15.0):
                if trio.current_time() > deadline:
                    raise RoundFailure(
                        f"{server.name} holds {len(copy)} keys of round {number}, deleted "
                        f"{RECOVERY_LIMIT:g} s ago and more"
                    )
                await trio.sleep(0.2)
        totals.deleted_rounds_checked += 1


async def delete_round(cluster: Cluster, number: int) -> None:
    body = {"Datacenter": "dc1", "Op": "delete-tree", "DirEnt": {"Key": f"crash/{number:04d}/"}}
    for _ in range(20):
        leader = await current_leader(cluster)
        if leader is not None:
            try:
                await call(leader, "KVS.Apply", body, within=15.0)
                return
            except CallErrors:
                pass
        await trio.sleep(0.5)
    raise RoundFailure(f"could not delete round {number}")


def count_lines(cluster: Cluster, *marks: str) -> int:
    """Log lines of all servers that hold every one of ``marks``."""
    return sum(
        1
        for server in cluster.servers
        for line in server.log_lines()
        if all(mark in line for mark in marks)
    )


def error_lines(cluster: Cluster) -> list[str]:
    return [f"{s.name}: {line}" for s in cluster.servers for line in error_lines_of(s)]


async def run_cluster(
    size: int,
    seconds: float,
    max_rounds: int,
    args: argparse.Namespace,
    rng: random.Random,
    stop: trio.Event,
) -> tuple[Totals, Path, str]:
    totals = Totals(servers=size)
    base = Path(tempfile.mkdtemp(prefix=f"raft-crash-loop-{size}-"))
    cluster = Cluster(
        base,
        size,
        rng=random.Random(rng.random()),
        extra_config=SNAPSHOT_CONFIG if args.small_snapshots else None,
    )
    began = time.monotonic()
    logs = ""
    kept: dict[int, WriteLog] = {}
    deleted: list[int] = []
    try:
        await cluster.start_all()
        await cluster.wait_leader(within=60)
        number = 0
        while number < max_rounds and time.monotonic() - began < seconds and not stop.is_set():
            number += 1
            kept[number] = await run_round(
                cluster,
                number,
                rng,
                totals,
                writers=args.writers,
                registers=args.registers,
                inject=args.inject,
            )
            totals.rounds = number
            if number % 5 == 0:
                await check_older(cluster, kept, deleted, totals)
            for old in [n for n in kept if n <= number - args.keep]:
                await delete_round(cluster, old)
                del kept[old]
                deleted.append(old)
            print(
                f"[{size} servers] round {number}: {len(kept[number].acked)} acked, "
                f"{len(kept[number].indeterminate)} indeterminate, kills {totals.kills} "
                f"({time.monotonic() - began:.0f} s)",
                flush=True,
            )
        totals.interrupted = stop.is_set()
        await check_older(cluster, kept, deleted, totals)
        errors = error_lines(cluster)
        if errors:
            raise RoundFailure("errors in the servers' logs:\n" + "\n".join(errors[:20]))
    except* (RoundFailure, ClusterError) as group:
        totals.failure = "\n".join(str(exc) for exc in _leaves(group))
        logs = cluster.logs(80)
    finally:
        totals.snapshots = count_lines(cluster, "raft snapshots: creating")
        totals.voters_added = count_lines(cluster, "consul: added Raft voter")
        totals.autopilot_removals = count_lines(cluster, "consul: removed Raft server", "autopilot")
        totals.raft_byte_refusals = known_noise(cluster.servers)
        totals.error_kinds = error_kinds(cluster.servers)
        totals.seconds = time.monotonic() - began
        with trio.CancelScope(shield=True):
            await cluster.stop_all()
    if not totals.failure and not args.keep_data:
        shutil.rmtree(base, ignore_errors=True)
    return totals, base, logs


def _leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for exc in group.exceptions for leaf in _leaves(exc)]
    return [group]


def _figures(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return (
        f"{len(values)}: median {statistics.median(values):.2f} s, p90 {p90:.2f} s, "
        f"max {max(values):.2f} s"
    )


def report(runs: list[tuple[Totals, Path, str]], args: argparse.Namespace) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    injected = f", INJECTED BUG: {args.inject}" if args.inject else ""
    lines = [
        "# Raft crash loop: real server processes under kill -9",
        "",
        f"`scripts/raft_crash_loop.py` run on {when}, seed {args.seed}{injected}, "
        f"{args.writers} writers and {2 * args.registers} register clients on "
        f"{args.registers} keys per round, small snapshots: {args.small_snapshots}.",
        "",
        "| | " + " | ".join(f"{t.servers} servers" for t, _, _ in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    rows: list[tuple[str, Any]] = [
        ("Wall seconds", lambda t: f"{t.seconds:.0f}"),
        ("Rounds", lambda t: t.rounds),
        ("Servers killed (kill -9)", lambda t: t.kills),
        ("Rounds killing the leader / two servers", lambda t: f"{t.leader_kills} / "
         f"{t.double_kills}"),
        ("Rounds that lost the quorum", lambda t: t.quorum_lost_rounds),
        ("Writes acknowledged / indeterminate", lambda t: f"{t.writes_acked} / "
         f"{t.writes_indeterminate}"),
        ("**Acknowledged writes lost**", lambda t: f"**{t.writes_lost}**"),
        ("Register operations (indeterminate)", lambda t: f"{t.register_ops} "
         f"({t.register_indeterminate})"),
        ("**Histories not linearizable**", lambda t: f"**{t.linearizability_violations}**"),
        ("Deleted rounds checked empty", lambda t: t.deleted_rounds_checked),
        ("Leader killed: new leader after", lambda t: _figures(t.elections)),
        ("Restart to one leader of all", lambda t: _figures(t.recoveries)),
        ("Snapshots written (all servers)", lambda t: t.snapshots),
        ("Voters (re)added by a leader / autopilot removals", lambda t: f"{t.voters_added} / "
         f"{t.autopilot_removals}"),
        ("Raft connections refused at start-up (known issue)", lambda t: t.raft_byte_refusals),
        ("Result", lambda t: "FAILED" if t.failure else "interrupted" if t.interrupted else "ok"),
    ]  # fmt: skip
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(str(cell(t)) for t, _, _ in runs) + " |")
    lines += [
        "",
        "Error lines the servers logged (none may be about Raft, the store or snapshots):",
        "",
    ]
    for totals, _, _ in runs:
        kinds = ", ".join(f"`{kind}` x{count}" for kind, count in totals.error_kinds.items())
        lines.append(f"- {totals.servers} servers: {kinds or 'none'}")
    for totals, base, logs in runs:
        if totals.failure:
            lines += [
                "",
                f"## Failure ({totals.servers} servers; data kept in {base})",
                "",
                "```",
                totals.failure,
                "```",
                "",
                "```",
                logs,
                "```",
            ]
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    share = args.minutes * 60 / len(args.servers)
    runs = []
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                # The first signal ends the run after the current round (then the report);
                # a second one cancels at once (the servers are killed on the way out).
                async for _ in signals:
                    if stop.is_set():
                        nursery.cancel_scope.cancel()
                        return
                    print("stopping after this round (again to stop now)", flush=True)
                    stop.set()

            nursery.start_soon(on_signal)
            for size in args.servers:
                result = await run_cluster(size, share, args.rounds, args, rng, stop)
                runs.append(result)
                if result[0].failure or stop.is_set():
                    break
            nursery.cancel_scope.cancel()
    text = report(runs, args)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        summary = [asdict(totals) for totals, _, _ in runs]
        args.output.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if any(totals.failure for totals, _, _ in runs) else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget")
    parser.add_argument("--rounds", type=int, default=1_000_000, help="most rounds per cluster")
    parser.add_argument("--servers", type=int, nargs="+", default=[3, 5], choices=[3, 5])
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--registers", type=int, default=2, help="register keys per round")
    parser.add_argument("--keep", type=int, default=3, help="rounds kept before deletion")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--no-small-snapshots", dest="small_snapshots", action="store_false",
        help="keep Raft's default snapshot threshold (8192) and trailing logs (10240)",
    )  # fmt: skip
    parser.add_argument(
        "--inject",
        choices=["stale-reads", "failed-as-acked"],
        default="",
        help="break the clients on purpose to see the checks fire: register reads with "
        "AllowStale, or failed writes recorded as acknowledged",
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the data dirs")
    parser.add_argument("--output", type=Path, help="write the report here (and .json)")
    args = parser.parse_args()
    return trio.run(main_async, args)


if __name__ == "__main__":
    sys.exit(main())
