"""A membership pool backed by gossip: serf's membership layer over a running memberlist.

:class:`GossipPool` is the agent's LAN (or WAN) pool when the agent gossips. It owns a
:class:`~agentrpc.gossip.serf.SerfState` and talks to memberlist through a
:class:`~agentrpc.gossip.contract.MemberlistHandle`. Wiring, in the agent::

    pool = GossipPool("lan", SerfConfig(node_name=name, tags=tags), logger=hub.logger("serf"))
    memberlist = Memberlist(ml_config, pool.serf, pool.serf, hub.logger("memberlist"),
                            transport, rng)
    pool.attach(memberlist)
    # in the agent's service nursery, memberlist first:
    await nursery.start(memberlist.run)
    await nursery.start(pool.run)

``pool.serf`` is memberlist's delegate *and* its event delegate. ``run`` does serf's
background maintenance (reconnecting to failed members, reaping old ones) until cancelled;
the commands (``members``, ``join``, ``force-leave``, ``leave``, ``stats``) work on any pool
that has a memberlist attached. The node name (``node.datacenter`` for WAN) is whatever the
builder puts in the :class:`SerfConfig`.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Mapping, Sequence

import trio

from ..gossip.contract import MemberlistHandle
from ..gossip.serf import (
    MemberEvent,
    SerfConfig,
    SerfError,
    SerfLifecycle,
    SerfLog,
    SerfMember,
    SerfState,
)
from ..log_protocol import clip
from ..protocol.bodies import IPAddress, Member

__all__ = ["GossipPool", "join_error_text", "member_of"]


def join_error_text(errors: Sequence[str]) -> str:
    """The error of a join where no address answered, as the reference words it (the
    go-multierror list of memberlist's ``Failed to join ...`` texts); "" without errors."""
    if not errors:
        return ""
    points = "\n".join(f"* {error}" for error in errors)
    return f"{len(errors)} error(s) occurred:\n\n{points}"


def _ip(member: SerfMember) -> IPAddress:
    try:
        return ipaddress.ip_address(member.addr)
    except ValueError:
        # Memberlist admits only 4- or 16-byte addresses, so this is a bug, not a peer's doing:
        # say so rather than list the member at 0.0.0.0.
        raise ValueError(
            f"member {clip(member.name)!r} has an address of {len(member.addr)} bytes "
            "(memberlist admits only 4 or 16)"
        ) from None


def member_of(member: SerfMember) -> Member:
    """The agent RPC's :class:`Member` of a serf member; ``ValueError`` when its address is
    not 4 or 16 bytes (which memberlist never admits)."""
    pmin, pmax, pcur, dmin, dmax, dcur = member.vsn
    return Member(
        name=member.name,
        addr=_ip(member),
        port=member.port,
        tags=dict(member.tags),
        status=str(member.status),
        protocol_min=pmin,
        protocol_max=pmax,
        protocol_cur=pcur,
        delegate_min=dmin,
        delegate_max=dmax,
        delegate_cur=dcur,
    )


class GossipPool:
    """A :class:`~agentrpc.membership.pool.MembershipPool` over serf and memberlist."""

    def __init__(
        self,
        name: str,
        config: SerfConfig,
        *,
        logger: SerfLog | None = None,
        memberlist: MemberlistHandle | None = None,
        encrypted: bool = False,
        rng: random.Random | None = None,
        on_event: Callable[[MemberEvent], None] | None = None,
    ) -> None:
        """``name`` is the pool's (``lan``/``wan``); ``logger`` should be the hub's ``serf``
        logger; ``encrypted`` says whether memberlist encrypts (shown in stats); ``rng``
        drives reconnect choices; ``on_event`` hears every member event. The memberlist can
        be given here or later to :meth:`attach` (it is built over :attr:`serf`)."""
        self._name = name
        self._serf = SerfState(config, logger=logger, clock=trio.current_time, on_event=on_event)
        self._log = logger
        self._memberlist = memberlist
        self._encrypted = encrypted
        self._rng = rng if rng is not None else random.Random()
        self._cache_version = -1
        self._cache: list[Member] = []

    # ------------------------------------------------------------------ wiring

    @property
    def serf(self) -> SerfState:
        """Memberlist's delegate and event delegate for this pool."""
        return self._serf

    @property
    def memberlist(self) -> MemberlistHandle | None:
        return self._memberlist

    def attach(self, memberlist: MemberlistHandle) -> None:
        """Give the pool the memberlist built over :attr:`serf` (once)."""
        if self._memberlist is not None and self._memberlist is not memberlist:
            raise RuntimeError(f"the {self._name} pool already has a memberlist")
        self._memberlist = memberlist

    # ------------------------------------------------------------------ MembershipPool

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int:
        return self._serf.version

    def members(self) -> list[Member]:
        """Every member serf knows, in any status (ourselves once memberlist started)."""
        if self._cache_version != self._serf.version:
            self._cache = [member_of(member) for member in self._serf.members()]
            self._cache_version = self._serf.version
        return list(self._cache)

    async def join(self, addresses: Sequence[str]) -> tuple[int, str]:
        """Push/pull with each address; on any success, gossip our join intent.

        Returns how many answered and "" when at least one did (as the reference: a partial
        join is a success), else the reference's error list."""
        if not addresses:
            return 0, ""
        if self._serf.lifecycle is not SerfLifecycle.ALIVE:
            return 0, "Serf can't Join after Leave or Shutdown"
        memberlist = self._memberlist
        if memberlist is None:
            return 0, f"the {self._name.upper()} pool's gossip layer is not running"
        num, errors = await memberlist.join(addresses)
        if num > 0:
            self._serf.broadcast_join()
            return num, ""
        return 0, join_error_text(errors) or f"Failed to join {', '.join(addresses)}"

    async def force_leave(self, node: str, *, prune: bool = False) -> str:
        """Gossip a leave intent about ``node`` and wait (bounded) until it was sent.

        A failed member becomes left; an unknown name is not an error."""
        sent = trio.Event()
        if not self._serf.force_leave(node, prune=prune, on_sent=sent.set):
            return ""
        with trio.move_on_after(self._serf.config.broadcast_timeout) as wait:
            await sent.wait()
        return "timed out broadcasting node removal" if wait.cancelled_caught else ""

    async def leave(self) -> str:
        """Leave gracefully: gossip our leave intent, wait (bounded) until it was sent, then
        memberlist's leave (``dead{self}``), linger ``leave_propagate_delay``; we end ``left``.

        A second call after the leave is a no-op; one during it is an error."""
        serf = self._serf
        if serf.lifecycle is SerfLifecycle.LEFT:
            return ""
        config = serf.config
        sent = trio.Event()
        try:
            queued = serf.begin_leave(on_sent=sent.set)
        except SerfError as exc:
            return str(exc)
        if queued:
            with trio.move_on_after(config.broadcast_timeout) as wait:
                await sent.wait()
            if wait.cancelled_caught:
                self._warn("timeout while waiting for graceful leave")
        memberlist = self._memberlist
        if memberlist is not None:
            with trio.move_on_after(config.broadcast_timeout) as wait:
                await memberlist.leave()
            if wait.cancelled_caught:
                self._warn("timeout waiting for leave broadcast")
            if queued:
                # Stay up a little so that peers' probes are answered until they know.
                await trio.sleep(config.leave_propagate_delay)
        serf.finish_leave()
        return ""

    def stats(self) -> dict[str, str]:
        """The reference's ``serf_lan``/``serf_wan`` keys, every value a string."""
        serf = self._serf
        memberlist = self._memberlist
        health = memberlist.health_score if memberlist is not None else 0
        return {
            "encrypted": "true" if self._encrypted else "false",
            "event_queue": "0",
            "event_time": str(serf.event_clock.time()),
            "failed": str(len(serf.failed_members())),
            "health_score": str(health),
            "intent_queue": str(len(serf.broadcasts)),
            "left": str(len(serf.left_members())),
            "member_time": str(serf.clock.time()),
            "members": str(serf.num_nodes()),
            "query_queue": "0",
            "query_time": str(serf.query_clock.time()),
        }

    # ------------------------------------------------------------------ more operations

    def set_max_members(self, max_members: int) -> None:
        """Change the pool's member bound at run time (``reload`` of ``gossip_max_members``):
        serf's members and buffered intents, and memberlist's node table when attached."""
        self._serf.set_max_members(max_members)
        if self._memberlist is not None:
            self._memberlist.set_max_members(max_members)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Replace our tags and have memberlist announce them (raises
        :class:`~agentrpc.gossip.serf.TagsTooLargeError` beyond 512 encoded bytes)."""
        self._serf.set_tags(tags)
        if self._memberlist is not None:
            self._memberlist.update_meta()

    async def reconnect_once(self) -> bool:
        """One reconnect round: maybe pick a failed member (serf's throttle) and try to join
        it, bounded by the reconnect interval. Returns whether an attempt was made."""
        memberlist = self._memberlist
        if memberlist is None or self._serf.lifecycle is not SerfLifecycle.ALIVE:
            return False
        target = self._serf.choose_reconnect(self._rng)
        if target is None:
            return False
        if self._log is not None:
            self._log.info(f"attempting reconnect to {clip(target.name)} {target.join_address}")
        with trio.move_on_after(self._serf.config.reconnect_interval):
            try:
                await memberlist.join([target.join_address])
            except OSError as exc:
                self._warn(f"reconnect to {clip(target.name)} failed: {clip(exc)}")
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serf's background work until cancelled: a reconnect attempt every
        ``reconnect_interval``, reaping (and the queue-depth check) every ``reap_interval``."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reconnect_loop)
            nursery.start_soon(self._reap_loop)
            task_status.started()

    async def _reconnect_loop(self) -> None:
        while True:
            await trio.sleep(self._serf.config.reconnect_interval)
            await self.reconnect_once()

    async def _reap_loop(self) -> None:
        while True:
            await trio.sleep(self._serf.config.reap_interval)
            self._serf.reap()
            self._serf.check_queue_depth()

    def _warn(self, message: str) -> None:
        if self._log is not None:
            self._log.warn(message)
