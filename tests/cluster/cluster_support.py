"""Real ``agentrpc serve`` server processes on loopback, for the crash tests of this directory
and ``scripts/raft_crash_loop.py``.

A :class:`Cluster` gives each server its own 127.0.0.x address (fixed ports, picked free once,
so that a restarted server comes back at the same Raft address), its own ``data_dir`` and a
log file (stderr, appended to across restarts). Servers start with ``--bootstrap-expect N``,
``raft_multiplier`` 1 (a config file) and ``--retry-join`` to every other server, so a restarted
server finds the cluster again on its own. :meth:`Cluster.kill` is ``kill -9``.

Clients speak the server port's msgpack RPC (byte 0, one connection per call): ``KVS.Apply``,
``KVS.Get``/``KVS.List`` and ``Status.Leader``. A :class:`WriteLog` records every write a
:func:`writer` attempted: acknowledged (the server answered without an error), or
indeterminate (any error, or no answer: the write may have committed or not). What must hold
after any crash is checked by :func:`check_contents`: every acknowledged write is there with
its value, and nothing shows that was never attempted.

A cluster may also hold client agents (``clients=N``: ``agentrpc serve --client`` on addresses of
their own, ``--retry-join`` to every server, an HTTP API on ``http_port``) and belong to another
datacenter (``datacenter=``); :meth:`Cluster.join_wan` makes its servers ``--retry-join-wan``
another cluster's servers. :func:`http` is one HTTP/1.1 request (a connection of its own) and
:func:`process_peers` the server ports an agent process holds TCP connections to (read from
``/proc``: which server a client agent's manager talks to).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

import trio

from agentrpc.serverport.endpoints import RemoteError, RPCCallError, call_on_stream

CLI: Final = [sys.executable, "-m", "agentrpc.cli"]
CALL_TIMEOUT: Final = 5.0
"""One client call (connect, request, answer); a write held for a leader takes up to 7 s
(Consul's RPCHoldTimeout) and is then cut here: an indeterminate write."""
WRITE_TIMEOUT: Final = 10.0
START_TIMEOUT: Final = 30.0
"""From exec to a server port that answers (imports take seconds on two loaded cores)."""
LOG_TAIL: Final = 60
"""Lines of each server's log shown when a check fails."""

CallErrors = (OSError, RPCCallError, RemoteError, trio.TooSlowError, trio.BrokenResourceError)
"""(``HTTPError`` is an ``OSError``.)"""


KNOWN_NOISE: Final = ("unrecognized RPC byte: byte=1",)
"""Error lines that are a known issue, not a failure of these checks: a restarted server's
port accepts connections before its Raft engine is registered for byte 1 (the agent opens the
Raft store after the server port), so a peer's Raft connection in that window is refused with
this [ERR] line; the peer retries. Counted and reported, see :func:`known_noise`."""
FATAL_TOPICS: Final = ("raft", "store", "snapshot", "fsm", "apply")
"""An ``[ERR]`` line that mentions one of these (a store write that failed, a snapshot that
could not be written or restored, an entry the state machine refused) fails the checks, as
does a traceback anywhere. Other ``[ERR]`` lines are what a cluster logs when peers are killed
(gossip push/pull and coordinate updates failing to connect, as Go's memberlist and Consul
log them): tallied by :func:`error_kinds`, not failures."""


class ClusterError(AssertionError):
    """A bounded wait ran out, or a check failed; the text says which and what was seen."""


def _free_port(ip: str) -> int:
    """A port free on ``ip`` for TCP and UDP both (gossip binds both)."""
    for _ in range(100):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind((ip, 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind((ip, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {ip}")


def loopback_block(size: int, rng: random.Random | None = None) -> list[str]:
    """``size`` consecutive 127.0.0.x addresses, from a random start (so that runs side by side
    rarely share one; the ports are checked free anyway)."""
    start = (rng or random.Random()).randrange(20, 250 - size)
    return [f"127.0.0.{start + i}" for i in range(size)]


def _open_log(path: Path, header: str) -> BinaryIO:
    """Blocking: ``path`` opened for appending (made if need be), ``header`` written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "ab")  # noqa: SIM115 (handed to the child process, closed by the caller)
    handle.write(header.encode() + b"\n")
    handle.flush()
    return handle


def _append_line(path: Path, line: str) -> None:
    with open(path, "ab") as handle:
        handle.write(line.encode() + b"\n")


@dataclass
class Server:
    """One server agent: where it listens, where it keeps its state, its current process."""

    name: str
    ip: str
    rpc_port: int
    lan_port: int
    wan_port: int
    server_port: int
    data_dir: Path
    log_path: Path
    process: trio.Process | None = None
    starts: int = 0
    kills: int = 0
    datacenter: str = "dc1"
    client: bool = False
    """A client agent: no server port, no WAN pool, an HTTP API on ``http_port``."""
    http_port: int = 0

    @property
    def address(self) -> str:
        """Its server port, ``ip:port``: also its Raft address (what ``Status.Leader`` says)."""
        return f"{self.ip}:{self.server_port}"

    @property
    def lan(self) -> str:
        return f"{self.ip}:{self.lan_port}"

    @property
    def wan(self) -> str:
        return f"{self.ip}:{self.wan_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def log_tail(self, lines: int = LOG_TAIL) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_lines(self) -> list[str]:
        return self.log_text().splitlines()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class Cluster:
    """``size`` server processes expecting ``expect`` servers (see the module's docstring).
    Use :func:`running_cluster`, which kills what is left and shows the logs on failure."""

    def __init__(
        self,
        base: Path,
        size: int,
        *,
        expect: int | None = None,
        rng: random.Random | None = None,
        extra_config: dict[str, Any] | None = None,
        log_level: str = "INFO",
        datacenter: str = "dc1",
        clients: int = 0,
        ips: Sequence[str] | None = None,
        prefix: str = "",
    ) -> None:
        """``ips``: the addresses to use (``size`` servers then ``clients`` clients; default a
        random :func:`loopback_block`); ``prefix`` starts every node name."""
        self.base = base
        self.expect = expect or size
        self.log_level = log_level
        self.datacenter = datacenter
        self.wan_joins: list[str] = []
        """Other datacenters' servers (WAN addresses) every server ``--retry-join-wan``s."""
        # No HTTP API and no DNS: their default addresses (Consul's 127.0.0.1:8500 and
        # :8600) would collide between the servers of one machine.
        config = {"raft_multiplier": 1, "http_addr": "", "dns_addr": "", **(extra_config or {})}
        self.config_path = base / "cluster.json"
        base.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(config))
        addresses = list(ips) if ips is not None else loopback_block(size + clients, rng)
        if len(addresses) < size + clients:
            raise ValueError(f"{size + clients} addresses needed, {len(addresses)} given")
        self.servers: list[Server] = []
        self.clients: list[Server] = []
        for index, ip in enumerate(addresses[: size + clients], start=1):
            client = index > size
            name = f"{prefix}c{index - size}" if client else f"{prefix}s{index}"
            (self.clients if client else self.servers).append(
                Server(
                    name=name,
                    ip=ip,
                    rpc_port=_free_port(ip),
                    lan_port=_free_port(ip),
                    wan_port=0 if client else _free_port(ip),
                    server_port=0 if client else _free_port(ip),
                    data_dir=base / name / "data",
                    log_path=base / name / "agent.log",
                    datacenter=datacenter,
                    client=client,
                    http_port=_free_port(ip) if client else 0,
                )
            )

    @property
    def agents(self) -> list[Server]:
        """Servers then clients."""
        return [*self.servers, *self.clients]

    def join_wan(self, other: Cluster) -> None:
        """This cluster's servers will ``--retry-join-wan`` every server of ``other``."""
        self.wan_joins += [server.wan for server in other.servers]

    # ------------------------------------------------------------------ processes

    def argv(self, server: Server) -> list[str]:
        joins: list[str] = []
        for other in self.servers:
            if other is not server:
                joins += ["--retry-join", other.lan]
        if server.client:
            return [
                *CLI,
                "serve",
                "--client",
                "--node",
                server.name,
                "--datacenter",
                server.datacenter,
                "--rpc-addr",
                f"{server.ip}:{server.rpc_port}",
                "--serf-lan-addr",
                server.lan,
                "--http-addr",
                f"{server.ip}:{server.http_port}",
                "--data-dir",
                str(server.data_dir),
                "--config-file",
                str(self.config_path),
                "--log-level",
                self.log_level,
                *joins,
                "--retry-interval",
                "1s",
            ]
        wan: list[str] = []
        for address in self.wan_joins:
            wan += ["--retry-join-wan", address]
        if wan:
            wan += ["--retry-interval-wan", "1s"]
        return [
            *CLI,
            "serve",
            "--node",
            server.name,
            "--rpc-addr",
            f"{server.ip}:{server.rpc_port}",
            "--serf-lan-addr",
            server.lan,
            "--serf-wan-addr",
            f"{server.ip}:{server.wan_port}",
            "--server-addr",
            server.address,
            "--data-dir",
            str(server.data_dir),
            "--bootstrap-expect",
            str(self.expect),
            "--config-file",
            str(self.config_path),
            "--log-level",
            self.log_level,
            *joins,
            "--retry-interval",
            "1s",
            "--datacenter",
            server.datacenter,
            *wan,
        ]

    async def start(self, server: Server) -> None:
        """Exec the server (its stderr appended to its log file); returns at once. See
        :meth:`wait_started`."""
        if server.running:
            raise ClusterError(f"{server.name} is already running")
        server.starts += 1
        log = await trio.to_thread.run_sync(
            _open_log, server.log_path, f"==== start {server.starts} at {time.time():.3f} ===="
        )
        try:
            server.process = await trio.lowlevel.open_process(
                self.argv(server),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log.close()  # the child has its own descriptor

    async def start_all(self, servers: Iterable[Server] | None = None) -> None:
        chosen = list(self.servers if servers is None else servers)
        for server in chosen:
            await self.start(server)
        await self.wait_started(chosen)

    async def wait_started(self, servers: Iterable[Server], within: float = START_TIMEOUT) -> None:
        """Until each server's port answers ``Status.Leader`` (any answer); a process that
        exits first is a failure (say, a store that does not open)."""
        pending = list(servers)
        deadline = trio.current_time() + within
        while pending:
            for server in list(pending):
                if not server.running:
                    code = server.process.returncode if server.process else None
                    raise ClusterError(
                        f"{server.name} exited (status {code}) before its server port "
                        f"answered:\n{server.log_tail()}"
                    )
                try:
                    if server.client:
                        await http(server, "GET", "/v1/agent/self", within=1.0)
                    else:
                        await call(server, "Status.Leader", {}, within=1.0)
                except CallErrors:
                    continue
                pending.remove(server)
            if pending:
                if trio.current_time() > deadline:
                    names = ", ".join(s.name for s in pending)
                    raise ClusterError(f"servers {names} did not answer within {within:g} s")
                await trio.sleep(0.1)

    async def kill(self, server: Server) -> None:
        """``kill -9`` and reap it."""
        await self.kill_together([server])

    async def kill_together(self, servers: Sequence[Server]) -> None:
        """``kill -9`` every one of ``servers`` before reaping any (a power cut)."""
        for server in servers:
            process = server.process
            if process is None or process.returncode is not None:
                raise ClusterError(f"{server.name} is not running")
        for server in servers:
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGKILL)
        stamp = f"==== kill -9 at {time.time():.3f} ===="
        for server in servers:
            assert server.process is not None
            with trio.fail_after(10):
                await server.process.wait()
            server.kills += 1
            await trio.to_thread.run_sync(_append_line, server.log_path, stamp)

    async def stop_all(self) -> None:
        """Kill whatever still runs (SIGKILL: the tests never need a clean stop)."""
        for server in self.agents:
            process = server.process
            if process is not None and process.returncode is None:
                process.kill()
                with trio.move_on_after(10):
                    await process.wait()

    @property
    def live(self) -> list[Server]:
        return [s for s in self.servers if s.running]

    def by_address(self, address: str) -> Server | None:
        return next((s for s in self.servers if s.address == address), None)

    def logs(self, lines: int = LOG_TAIL) -> str:
        parts = []
        for server in self.agents:
            state = "running" if server.running else "stopped"
            parts.append(
                f"----- {server.name} {server.address} ({state}, {server.starts} starts, "
                f"{server.kills} kills) {server.log_path}\n{server.log_tail(lines)}"
            )
        return "\n".join(parts)

    # ------------------------------------------------------------------ leadership

    async def leaders_seen(self, servers: Iterable[Server]) -> dict[str, str]:
        """Each server's ``Status.Leader`` (``"?"`` when it did not answer)."""
        seen: dict[str, str] = {}
        for server in servers:
            try:
                seen[server.name] = str(await call(server, "Status.Leader", {}, within=2.0))
            except CallErrors:
                seen[server.name] = "?"
        return seen

    async def wait_leader(
        self, servers: Sequence[Server] | None = None, *, within: float = 20.0
    ) -> tuple[Server, float]:
        """Until ``servers`` (default: every running one) all name the same leader, one of
        them, and it takes a write; returns it and the seconds it took."""
        chosen = list(self.live if servers is None else servers)
        began = trio.current_time()
        deadline = began + within
        seen: dict[str, str] = {}
        while True:
            seen = await self.leaders_seen(chosen)
            names = set(seen.values())
            if len(names) == 1:
                leader = self.by_address(names.pop())
                if leader is not None and leader in chosen:
                    try:
                        probe = kv_set("probe/leader", b"1", datacenter=leader.datacenter)
                        await call(leader, "KVS.Apply", probe, within=3)
                    except CallErrors:
                        pass
                    else:
                        return leader, trio.current_time() - began
            if trio.current_time() > deadline:
                raise ClusterError(f"no single leader within {within:g} s; last seen: {seen}")
            await trio.sleep(0.1)


async def call(server: Server, method: str, args: Any, *, within: float = CALL_TIMEOUT) -> Any:
    """One msgpack RPC call on ``server``'s port (byte 0, a connection of its own)."""
    with trio.fail_after(within):
        stream = await trio.open_tcp_stream(server.ip, server.server_port)
        try:
            await stream.send_all(b"\x00")
            return await call_on_stream(stream, method, args, seq=1)
        finally:
            await trio.aclose_forcefully(stream)


def kv_set(key: str, value: bytes, *, datacenter: str = "dc1") -> dict[str, Any]:
    return {"Datacenter": datacenter, "Op": "set", "DirEnt": {"Key": key, "Value": value}}


async def kv_apply(
    server: Server, key: str, value: bytes, *, within: float = WRITE_TIMEOUT
) -> None:
    """A set; returns once acknowledged (an answer without an error: as Consul's, the reply
    body of a plain set is ``false``, only CAS ops fill it), raises one of :data:`CallErrors`
    otherwise."""
    await call(server, "KVS.Apply", kv_set(key, value, datacenter=server.datacenter), within=within)


async def kv_get(
    server: Server, key: str, *, consistent: bool = True, within: float = CALL_TIMEOUT
) -> bytes | None:
    """``KVS.Get``: consistent (the leader checks it still leads) or stale (this server's
    own state machine)."""
    reply = await call(
        server,
        "KVS.Get",
        {
            "Datacenter": server.datacenter,
            "Key": key,
            "AllowStale": not consistent,
            "RequireConsistent": consistent,
        },
        within=within,
    )
    entries = reply.get("Entries") or []
    return bytes(entries[0]["Value"]) if entries else None


async def kv_list(
    server: Server, prefix: str, *, stale: bool = True, within: float = CALL_TIMEOUT
) -> dict[str, bytes]:
    """``KVS.List`` of ``prefix``: key -> value (stale by default: this server's own copy)."""
    reply = await call(
        server,
        "KVS.List",
        {
            "Datacenter": server.datacenter,
            "Key": prefix,
            "AllowStale": stale,
            "RequireConsistent": False,
        },
        within=within,
    )
    found: dict[str, bytes] = {}
    for entry in reply.get("Entries") or []:
        key = entry["Key"]
        found[key.decode() if isinstance(key, bytes) else str(key)] = bytes(entry["Value"] or b"")
    return found


# ------------------------------------------------------------------ writes and checks


@dataclass
class WriteLog:
    """Every write attempted: acknowledged ones, and those whose outcome is unknown."""

    acked: dict[str, bytes] = field(default_factory=dict)
    indeterminate: dict[str, bytes] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    _grew: trio.Event = field(default_factory=trio.Event)

    def ack(self, key: str) -> None:
        self.acked[key] = self.indeterminate.pop(key)
        self._grew.set()
        self._grew = trio.Event()

    async def wait_acked(self, count: int) -> None:
        """Until ``count`` writes are acknowledged (callers bound the time)."""
        while len(self.acked) < count:
            await self._grew.wait()

    @property
    def attempted(self) -> dict[str, bytes]:
        return {**self.indeterminate, **self.acked}

    def error(self, exc: BaseException) -> None:
        kind = type(exc).__name__
        if isinstance(exc, RemoteError):
            kind = f"RemoteError: {exc.error[:60]}"
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def writer(
    number: int,
    targets: Callable[[], Sequence[Server]],
    log: WriteLog,
    *,
    prefix: str = "crash/",
    rng: random.Random | None = None,
    limit: int = 100_000,
    lie: bool = False,
) -> None:
    """Write ``<prefix><number>/<seq>`` keys one after the other, each once, to a random
    server of ``targets()`` (a follower forwards to the leader), until cancelled; records each
    in ``log``. After a failure it backs off a little (a dead server refuses at once).
    ``lie`` records failed writes as acknowledged: a client bug the checks must catch."""
    chooser = rng or random.Random(number)
    for seq in range(limit):
        choices = targets()
        if not choices:
            await trio.sleep(0.05)
            continue
        server = chooser.choice(list(choices))
        key = f"{prefix}{number}/{seq:06d}"
        value = f"{number}:{seq}:{server.name}".encode()
        log.indeterminate[key] = value
        try:
            await kv_apply(server, key, value)
        except CallErrors as exc:
            log.error(exc)
            if lie:  # a broken client, to see the checks fire (scripts/raft_crash_loop.py)
                log.ack(key)
            await trio.sleep(0.05)
            continue
        log.ack(key)


def check_contents(contents: dict[str, bytes], log: WriteLog, *, prefix: str = "crash/") -> str:
    """What is wrong with ``contents`` (a server's keys under ``prefix``) given ``log``: an
    acknowledged write missing or with another value, or a key never written. "" when fine."""
    problems = []
    missing = [k for k in log.acked if contents.get(k) != log.acked[k]]
    if missing:
        problems.append(f"{len(missing)} acknowledged writes missing or wrong, e.g. {missing[:5]}")
    attempted = log.attempted
    strange = [k for k, v in contents.items() if k.startswith(prefix) and attempted.get(k) != v]
    if strange:
        problems.append(f"{len(strange)} keys never written (or other values), e.g. {strange[:5]}")
    return "; ".join(problems)


async def wait_converged(
    servers: Sequence[Server], log: WriteLog, *, prefix: str = "crash/", within: float = 20.0
) -> dict[str, bytes]:
    """Until every server's own copy (a stale read) under ``prefix`` holds every acknowledged
    write and all copies are the same; returns that content."""
    deadline = trio.current_time() + within
    last: dict[str, str] = {}
    while True:
        copies: dict[str, dict[str, bytes]] = {}
        for server in servers:
            try:
                copies[server.name] = await kv_list(server, prefix)
            except CallErrors as exc:
                last[server.name] = f"no answer: {exc!r}"
                continue
            last[server.name] = check_contents(copies[server.name], log, prefix=prefix) or "ok"
        if len(copies) == len(servers):
            first = next(iter(copies.values()))
            if all(v == "ok" for v in last.values()) and all(c == first for c in copies.values()):
                return first
        if trio.current_time() > deadline:
            sizes = {name: len(c) for name, c in copies.items()}
            raise ClusterError(
                f"servers did not converge within {within:g} s: {last}; keys held: {sizes}; "
                f"acknowledged {len(log.acked)}, indeterminate {len(log.indeterminate)}"
            )
        await trio.sleep(0.2)


@asynccontextmanager
async def running_cluster(base: Path, size: int, **options: Any) -> AsyncIterator[Cluster]:
    """A :class:`Cluster` (not started yet); on the way out every process left is killed, and
    when the body failed the tail of each server's log is printed (pytest shows it)."""
    cluster = Cluster(base, size, **options)
    try:
        yield cluster
    except BaseException:
        print(f"===== server logs ({base})\n{cluster.logs()}")
        raise
    finally:
        with trio.CancelScope(shield=True):
            await cluster.stop_all()


@asynccontextmanager
async def running_clusters(
    base: Path, specs: Sequence[dict[str, Any]]
) -> AsyncIterator[list[Cluster]]:
    """Several :class:`Cluster` s (one per dict of options, each with ``size``), under
    ``base/<datacenter>``, not started; as :func:`running_cluster` for all of them."""
    clusters = [Cluster(base / str(spec.get("datacenter", "dc1")), **spec) for spec in specs]
    try:
        yield clusters
    except BaseException:
        for cluster in clusters:
            print(f"===== {cluster.datacenter} logs ({cluster.base})\n{cluster.logs()}")
        raise
    finally:
        with trio.CancelScope(shield=True):
            for cluster in clusters:
                await cluster.stop_all()


# ------------------------------------------------------------------ HTTP and sockets


class HTTPError(OSError):
    """An HTTP answer this module could not read."""


@dataclass
class HTTPReply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def http(
    agent: Server,
    method: str,
    target: str,
    body: bytes = b"",
    *,
    within: float = CALL_TIMEOUT,
) -> HTTPReply:
    """One HTTP/1.1 request to ``agent``'s HTTP API (a connection of its own, closed after)."""
    request = (
        f"{method} {target} HTTP/1.1\r\nHost: {agent.ip}\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with trio.fail_after(within):
        stream = await trio.open_tcp_stream(agent.ip, agent.http_port)
        try:
            await stream.send_all(request)
            data = bytearray()
            while len(data) < 1 << 24:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            await trio.aclose_forcefully(stream)
    head, sep, rest = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not sep or len(parts) < 2 or not parts[1].isdigit():
        raise HTTPError(f"no HTTP answer from {agent.name}: {bytes(data[:200])!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        rest = rest[: int(headers["content-length"])]
    return HTTPReply(int(parts[1]), headers, rest)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _hex_address(text: str) -> str:
    host, _, port = text.partition(":")
    octets = [str(int(host[i : i + 2], 16)) for i in range(6, -1, -2)]  # little-endian
    return f"{'.'.join(octets)}:{int(port, 16)}"


def process_peers(agent: Server) -> set[str]:
    """Blocking: the ``ip:port`` addresses ``agent``'s process holds established TCP
    connections to (Linux's ``/proc``; IPv4)."""
    if agent.process is None:
        return set()
    inodes = _socket_inodes(agent.process.pid)
    peers = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9 and fields[3] == "01" and fields[9] in inodes:  # ESTABLISHED
            peers.add(_hex_address(fields[2]))
    return peers


async def wait_holding(
    servers: Sequence[Server],
    expected: dict[str, bytes],
    *,
    prefix: str = "crash/",
    within: float = 20.0,
) -> None:
    """Until every server's own copy holds each of ``expected`` (while writes go on)."""
    deadline = trio.current_time() + within
    last: dict[str, str] = {}
    while True:
        for server in servers:
            if last.get(server.name) == "ok":
                continue
            try:
                copy = await kv_list(server, prefix)
            except CallErrors as exc:
                last[server.name] = f"no answer: {exc!r}"
                continue
            missing = [k for k, v in expected.items() if copy.get(k) != v]
            last[server.name] = f"missing {len(missing)}, e.g. {missing[:5]}" if missing else "ok"
        if all(last.get(s.name) == "ok" for s in servers):
            return
        if trio.current_time() > deadline:
            raise ClusterError(f"acknowledged writes not all held within {within:g} s: {last}")
        await trio.sleep(0.2)


def error_lines_of(server: Server) -> list[str]:
    """The server's log lines that fail the checks (see :data:`FATAL_TOPICS`)."""
    return [line for line in server.log_lines() if _fatal(line)]


def _fatal(line: str) -> bool:
    if "Traceback" in line:
        return True
    if "[ERR]" not in line or any(noise in line for noise in KNOWN_NOISE):
        return False
    lowered = line.lower()
    return any(topic in lowered for topic in FATAL_TOPICS)


def error_kinds(servers: Iterable[Server]) -> dict[str, int]:
    """The ``[ERR]`` lines of the servers, counted by kind (the logger and the message's
    first words, addresses left out)."""
    kinds: dict[str, int] = {}
    for server in servers:
        for line in server.log_lines():
            _, mark, rest = line.partition("[ERR] ")
            if not mark:
                continue
            words = [w for w in rest.split() if not any(c.isdigit() for c in w)][:6]
            kind = " ".join(words)
            kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items(), key=lambda item: -item[1]))


def known_noise(servers: Iterable[Server]) -> int:
    """How many :data:`KNOWN_NOISE` lines the servers logged."""
    return sum(1 for s in servers for line in s.log_lines() if any(n in line for n in KNOWN_NOISE))
