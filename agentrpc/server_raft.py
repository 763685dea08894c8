"""A server agent's Raft: its stores, its engine, and what Consul's server does around them.

:class:`ServerRaft` owns, in :meth:`ServerRaft.run`'s nursery:

* the stores: SQLite (``data_dir/raft/raft.db``: log and stable store, WAL, fsynced) and
  snapshot files (``data_dir/raft/snapshots/``, the two newest kept), opened in a worker
  thread; without a data directory (``--dev``, tests) a memory store and snapshots in a
  temporary directory removed at the end;
* the :class:`~agentrpc.raft.engine.RaftEngine` over the catalog's hub (the FSM), with the
  Raft transport dialing peers' server ports (byte 1, or byte 3 then byte 1 under TLS);
* **bootstrap**: with ``bootstrap_expect`` 1 (bootstrap mode, the default) a server with no
  Raft state bootstraps a cluster of itself; with N > 1 it waits until N servers of its
  datacenter are alive in the LAN pool, asks each for ``Status.Peers`` (a cluster that already
  exists is joined, never bootstrapped again) and bootstraps with all N
  (:func:`~agentrpc.catalog.servers.bootstrap_plan`);
* **leadership**: while this server leads, the catalog's leader duties run (after a barrier,
  as Consul's ``establishLeadership``); they are cancelled when leadership is lost. Their
  server joins and leaves come back to :meth:`ServerRaft.server_change`, which adds a voter
  or removes a server; with ``autopilot_cleanup_dead_servers`` the leader also removes servers
  that stay failed, a minority at a time (:func:`~agentrpc.catalog.servers.dead_servers`);
* :meth:`ServerRaft.leave`: a leader hands leadership over before the agent leaves serf.

Errors: a store that does not open raises :class:`RaftStartError` from ``run`` (the agent
reports it as a start error); a configuration change that fails is logged (throttled) and
retried by the next reconciliation.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import trio

from .catalog.duties import LeaderDuties
from .catalog.hub import StateHub
from .catalog.leader import ServerJoin, ServerLeave
from .catalog.raft_consensus import RaftApplier, RaftFacts
from .catalog.servers import (
    AddVoter,
    RemoveServer,
    bootstrap_configuration,
    bootstrap_plan,
    dead_servers,
    join_changes,
    leave_changes,
    parse_server,
)
from .config import AgentConfig
from .log_protocol import WARN, LogLike, clip
from .member_status import STATUS_ALIVE
from .protocol.bodies import Member
from .raft.configuration import Configuration, Server, Suffrage
from .raft.engine import RaftEngine
from .raft.errors import RaftError
from .raft.memory_store import MemoryStore
from .raft.snapshots import FileSnapshotStore
from .raft.sqlite_store import SQLiteStore
from .raft.store_common import StoreError
from .raft.store_thread import InlineRunner, StoreRunner
from .raft.timing import RaftConfig
from .raft.transport import Dialer, RaftTransport
from .serverport.endpoints import RemoteError, RPCCallError
from .serverport.pool import ConnectionPool
from .transports import AddressError

__all__ = ["RaftStartError", "ServerRaft", "load_node_id", "raft_config"]

RAFT_DIR: Final = "raft"
RAFT_DB: Final = "raft.db"
NODE_ID_FILE: Final = "node-id"
CHANGE_TIMEOUT: Final = 30.0
"""How long one Raft configuration change may take before it counts as failed."""
LEAVE_TRANSFER_TIMEOUT: Final = 10.0
"""How long a leaving leader tries to hand leadership over."""
AUTOPILOT_INTERVAL: Final = 10.0
"""Between two dead-server checks of the leader (Consul's autopilot ``ServerStabilization``
scale of interval)."""
EXPECT_RETRY: Final = 1.0
"""Between two bootstrap checks while waiting for ``bootstrap_expect`` servers whose peers
could not be asked."""


class RaftStartError(Exception):
    """The Raft stores could not be opened; the text says which and why."""


def load_node_id(data_dir: str) -> str:
    """This server's node ID (a UUID): read from ``data_dir/node-id``, created there (0o600,
    fsynced) on first start; a fresh one each start without a data directory. Blocking."""
    if not data_dir:
        return str(uuid.uuid4())
    path = Path(data_dir) / NODE_ID_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise RaftStartError(f"node ID file {path}: {exc}") from exc
    if text:
        try:
            return str(uuid.UUID(text))
        except ValueError:
            raise RaftStartError(f"node ID file {path}: not a UUID: {clip(text, 64)}") from None
    node_id = str(uuid.uuid4())
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w", encoding="ascii") as handle:
        os.chmod(temporary, 0o600)
        handle.write(node_id + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return node_id


@dataclass
class _Stores:
    logs: SQLiteStore | MemoryStore
    snapshots: FileSnapshotStore
    temporary: str = ""

    def close(self) -> None:
        self.logs.close()
        if self.temporary:
            shutil.rmtree(self.temporary, ignore_errors=True)


def _open_stores(data_dir: str, log: LogLike) -> _Stores:
    """Blocking: the SQLite store and snapshot files under ``data_dir/raft``, or memory."""
    if not data_dir:
        temporary = tempfile.mkdtemp(prefix="agentrpc-raft-")
        return _Stores(MemoryStore(), FileSnapshotStore(temporary, log=log), temporary)
    base = Path(data_dir) / RAFT_DIR
    try:
        logs = SQLiteStore(base / RAFT_DB, log=log)
    except (OSError, StoreError) as exc:
        raise RaftStartError(f"raft store {base / RAFT_DB}: {exc}") from exc
    try:
        snapshots = FileSnapshotStore(base, log=log)
    except (OSError, StoreError) as exc:
        logs.close()
        raise RaftStartError(f"raft snapshots {base}: {exc}") from exc
    return _Stores(logs, snapshots)


def raft_config(config: AgentConfig, node_id: str, address: str) -> RaftConfig:
    """Go's defaults scaled by ``raft_multiplier``, with the agent's snapshot settings."""
    base = RaftConfig(node_id, address).scaled(config.raft_multiplier)
    tuned = replace(
        base,
        snapshot_threshold=config.raft_snapshot_threshold,
        snapshot_interval=config.raft_snapshot_interval,
        trailing_logs=config.raft_trailing_logs,
    )
    tuned.validate()
    return tuned


def _has_state(engine: RaftEngine) -> bool:
    core = engine.core
    return core.term > 0 or core.last_index > 0 or core.snapshot is not None


class ServerRaft:
    """The Raft side of one server agent (see the module's docstring)."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        node_id: str,
        logger: LogLike,
        dialer: Dialer,
        pool: Callable[[], ConnectionPool | None],
        lan_members: Callable[[], Iterable[Member]],
    ) -> None:
        self.config = config
        self.node_id = node_id
        self.engine: RaftEngine | None = None
        self.facts = RaftFacts(lambda: self.engine)
        self.applier = RaftApplier(lambda: self.engine)
        self.leading = False
        """True while the leader duties run here."""
        self.bootstrapped = False
        """True once this server bootstrapped a cluster (this run)."""
        self._log = logger
        self._dialer = dialer
        self._pool = pool
        self._lan_members = lan_members
        self._expecting = config.bootstrap_expect > 1
        self._members_changed = trio.Event()
        self._leaving = False
        self._changes = trio.Lock()

    @property
    def bootstrap_mode(self) -> bool:
        """``bootstrap_expect`` 1: this server bootstraps alone (Consul's ``-bootstrap``)."""
        return self.config.bootstrap_expect == 1

    @property
    def leaving(self) -> bool:
        return self._leaving

    # ------------------------------------------------------------------ running

    async def run(
        self,
        hub: StateHub,
        duties: LeaderDuties,
        address: str,
        *,
        task_status: trio.TaskStatus[RaftEngine] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Open the stores, run the engine at ``address`` (this server port's advertised
        ``ip:port``) and everything around it, until cancelled."""
        settings = raft_config(self.config, self.node_id, address)
        log = self._log
        on_disk = bool(self.config.data_dir)
        # Nothing on disk: the memory store runs inline (see InlineRunner), no worker thread.
        runner = StoreRunner() if on_disk else InlineRunner()
        stores = await runner.run(_open_stores, self.config.data_dir, log)
        if self.config.data_dir:
            log.info(f"raft: log and snapshots under {Path(self.config.data_dir) / RAFT_DIR}")
        else:
            log.info("raft: in memory (no data_dir): nothing survives a restart")
        try:
            engine = RaftEngine(
                settings,
                logs=stores.logs,
                stable=stores.logs,
                snapshots=stores.snapshots,
                fsm=hub,
                transport=RaftTransport(self._dialer, log=log),
                log=log,
                runner=runner,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(engine.run)
                self.engine = engine
                if self.bootstrap_mode and not _has_state(engine):
                    self._bootstrap(Configuration.of([Server(self.node_id, address)]))
                elif self._expecting and _has_state(engine):
                    self._expecting = False  # an existing cluster: never bootstrap again
                if self._expecting:
                    nursery.start_soon(self._expect_loop, address)
                nursery.start_soon(self._lead, engine, duties)
                task_status.started(engine)
        finally:
            self.engine = None
            self.leading = False
            with trio.CancelScope(shield=True):
                await runner.run(stores.close)

    def _bootstrap(self, configuration: Configuration) -> None:
        engine = self.engine
        if engine is None:
            return
        try:
            engine.bootstrap(configuration)
        except RaftError as exc:
            self._log.info(f"raft: not bootstrapping: {exc}")
            return
        self.bootstrapped = True
        names = ", ".join(server.address for server in configuration.servers)
        self._log.info(f"raft: bootstrapped a cluster of {len(configuration.servers)}: {names}")

    # ------------------------------------------------------------------ bootstrap_expect

    def member_event(self) -> None:
        """The LAN membership changed: look at ``bootstrap_expect`` again."""
        self._members_changed.set()

    async def _expect_loop(self, address: str) -> None:
        expect = self.config.bootstrap_expect
        while self._expecting:
            changed = self._members_changed
            plan = bootstrap_plan(
                self._lan_members(), datacenter=self.config.datacenter, expect=expect
            )
            if plan.disable:
                self._log.warn(f"consul: {plan.reason}")
                self._expecting = False
                return
            if plan.servers is None:
                if plan.reason.startswith("Member"):
                    self._log.throttled(WARN, "raft:expect-conflict", f"consul: {plan.reason}")
                await changed.wait()
                self._members_changed = trio.Event()
                continue
            verdict = await self._peers_of(plan.servers, address)
            if verdict == "exists":
                self._log.info(
                    "consul: Existing Raft peers reported by server, disabling bootstrap mode"
                )
                self._expecting = False
                return
            if verdict == "unknown":
                with trio.move_on_after(EXPECT_RETRY):
                    await changed.wait()
                self._members_changed = trio.Event()
                continue
            engine = self.engine
            if engine is not None and _has_state(engine):
                self._expecting = False  # a leader reached us meanwhile
                return
            self._expecting = False
            self._bootstrap(bootstrap_configuration(plan.servers))

    async def _peers_of(self, servers: Iterable[Any], address: str) -> str:
        """ "exists" when a server reports Raft peers, "unknown" when one could not be asked,
        "none" when none has any."""
        pool = self._pool()
        if pool is None:
            return "unknown"
        for info in servers:
            if info.address == address:
                continue
            try:
                peers = await pool.call(info.address, "Status.Peers", {})
            except (RPCCallError, RemoteError, AddressError) as exc:
                self._log.throttled(
                    WARN,
                    "raft:expect-peers",
                    f"consul: Failed to confirm peer status for {info.name}: {clip(exc)}. "
                    "Retrying...",
                )
                return "unknown"
            if isinstance(peers, list) and peers:
                return "exists"
        return "none"

    # ------------------------------------------------------------------ leadership

    async def _lead(self, engine: RaftEngine, duties: LeaderDuties) -> None:
        """Run the leader duties while this server leads; stop them when it does not."""
        while True:
            while not engine.is_leader:
                await engine.wait_changed()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._while_leader, engine, nursery.cancel_scope)
                nursery.start_soon(self._establish, engine, duties)

    async def _while_leader(self, engine: RaftEngine, scope: trio.CancelScope) -> None:
        while engine.is_leader:
            await engine.wait_changed()
        scope.cancel()

    async def _establish(self, engine: RaftEngine, duties: LeaderDuties) -> None:
        try:
            await engine.barrier()
        except RaftError as exc:
            self._log.warn(f"consul: failed to wait for barrier: {exc}")
            return  # leadership is being lost: the watcher ends this round
        self._log.info("consul: cluster leadership acquired")
        self.leading = True
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(duties.run)
                if self.config.autopilot_cleanup_dead_servers:
                    nursery.start_soon(self._autopilot, engine)
        finally:
            self.leading = False
            self._log.info("consul: cluster leadership lost")

    async def _autopilot(self, engine: RaftEngine) -> None:
        while True:
            await trio.sleep(AUTOPILOT_INTERVAL)
            removals = dead_servers(
                engine.core.configuration,
                self._lan_members(),
                datacenter=self.config.datacenter,
                local_id=self.node_id,
            )
            for removal in removals:
                await self._carry_out(engine, removal)

    # ------------------------------------------------------------------ voters

    async def server_change(self, change: ServerJoin | ServerLeave) -> None:
        """The leader's reconciliation found a server alive (join) or gone (leave)."""
        engine = self.engine
        if engine is None or not engine.is_leader:
            await trio.lowlevel.checkpoint()
            return
        configuration = engine.core.configuration
        if isinstance(change, ServerJoin):
            others = [
                info.name
                for info in map(parse_server, self._lan_members())
                if info is not None and info.bootstrap and info.status == STATUS_ALIVE
            ]
            changes, refusal = join_changes(
                configuration,
                change,
                local_bootstrap=self.bootstrap_mode,
                bootstrap_members=others,
            )
            if refusal:
                self._log.throttled(WARN, "raft:two-bootstrap", f"consul: {refusal}")
        else:
            changes = list(leave_changes(configuration, change, local_id=self.node_id))
        for step in changes:
            await self._carry_out(engine, step)

    async def _carry_out(self, engine: RaftEngine, step: AddVoter | RemoveServer) -> None:
        async with self._changes:
            try:
                with trio.fail_after(CHANGE_TIMEOUT):
                    if isinstance(step, AddVoter):
                        await engine.add_voter(step.id, step.address)
                        self._log.info(f"consul: added Raft voter {step.id} at {step.address}")
                    else:
                        await engine.remove_server(step.id)
                        self._log.info(f"consul: removed Raft server {step.id}: {step.reason}")
            except (RaftError, trio.TooSlowError) as exc:
                what = "add" if isinstance(step, AddVoter) else "remove"
                self._log.throttled(
                    WARN,
                    f"raft:{what}-failed",
                    f"consul: failed to {what} Raft server {clip(step.id, 64)}: "
                    f"{clip(exc) or 'timed out'}",
                )

    # ------------------------------------------------------------------ leaving

    async def leave(self) -> None:
        """Before the agent leaves serf: a leader with other voters hands leadership over
        (bounded), so that the next leader removes this server once serf says it left."""
        self._leaving = True
        engine = self.engine
        if engine is None or not engine.is_leader:
            await trio.lowlevel.checkpoint()
            return
        voters = [s for s in engine.core.configuration.servers if s.id != self.node_id]
        if not voters:
            await trio.lowlevel.checkpoint()
            return
        try:
            with trio.fail_after(LEAVE_TRANSFER_TIMEOUT):
                await engine.transfer_leadership()
        except (RaftError, trio.TooSlowError) as exc:
            self._log.warn(f"consul: failed to transfer leadership before leaving: {exc}")
            return
        self._log.info("consul: leadership transferred before leaving")

    async def remove_peer(self, *, address: str = "", server_id: str = "") -> None:
        """``Operator.RaftRemovePeerByAddress`` / ``ByID`` on the leader: remove the server
        with that address (or ID) from the configuration. :class:`RaftError` with Consul's
        text when it is not there, or Raft's when the change fails."""
        engine = self.engine
        if engine is None:
            await trio.lowlevel.checkpoint()
            raise RaftError("raft is already shutdown")
        servers = engine.core.configuration.servers
        if address:
            found = next((s for s in servers if s.address == address), None)
            if found is None:
                await trio.lowlevel.checkpoint()
                raise RaftError(f'address "{address}" was not found in the Raft configuration')
        else:
            found = next((s for s in servers if s.id == server_id), None)
            if found is None:
                await trio.lowlevel.checkpoint()
                raise RaftError(f'id "{server_id}" was not found in the Raft configuration')
        with trio.fail_after(CHANGE_TIMEOUT):
            await engine.remove_server(found.id)
        self._log.info(f"consul: removed Raft peer {found.id} at {found.address} (operator)")

    # ------------------------------------------------------------------ visible

    def stats(self) -> dict[str, str]:
        """hashicorp/raft's ``Stats()`` for the ``raft`` section of ``stats``."""
        engine = self.engine
        if engine is None:
            return {"state": "Shutdown"}
        try:
            return engine.stats()
        except RaftError:
            return {"state": "Shutdown"}

    def configuration_index(self) -> int:
        """The log index of the latest configuration (``GetConfiguration().Index()``), 0
        before the engine runs."""
        engine = self.engine
        if engine is None:
            return 0
        try:
            return engine.core.latest_configuration_index
        except RaftError:
            return 0

    def configuration(self) -> list[dict[str, Any]]:
        """The latest configuration's servers (ID, Address, Voter, Leader)."""
        engine = self.engine
        if engine is None:
            return []
        try:
            leader = engine.leader_id
            servers = engine.core.configuration.servers
        except RaftError:
            return []
        return [
            {
                "ID": server.id,
                "Address": server.address,
                "Voter": server.suffrage == Suffrage.VOTER,
                "Leader": server.id == leader,
            }
            for server in servers
        ]
