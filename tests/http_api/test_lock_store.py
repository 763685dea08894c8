"""The lock-store scenario HA managers run (Patroni, Consul's own ``api.Lock``), on the
autojump clock over memory streams with Consul's real timings: three clients, each with its
own session (TTL 10 s, lock-delay 15 s), compete for one key with ``?acquire``; the holder
renews at TTL/2 and checks it still holds; the holder is killed (its session stops renewing);
another client holds the key within TTL x 2 + lock-delay (+ its retry interval); twice over.
Never two holders at once, checked over the whole history, every client's belief included."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

import trio
import trio.testing
from http_helpers import SERVER, TrioHTTP, cluster

from agentrpc.transports import MemoryNetwork

TTL = 10.0
LOCK_DELAY = 15.0
RETRY = 1.0
KEY = "service/cluster/leader"


@dataclass
class Hold:
    name: str
    start: float
    end: float | None = None


@dataclass
class Contender:
    name: str
    conn: TrioHTTP
    history: list[Hold]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    session: str = ""
    hold: Hold | None = None
    killed_at: float | None = None
    acquired: trio.Event = field(default_factory=trio.Event)

    def kill(self) -> None:
        """The process dies: nothing more is sent, its session is no longer renewed."""
        self.killed_at = trio.current_time()
        if self.hold is not None:
            self.hold.end = self.killed_at
        self.scope.cancel()

    async def run(self) -> None:
        with self.scope:
            body = json.dumps(
                {"name": self.name, "ttl": f"{TTL:g}s", "lockdelay": f"{LOCK_DELAY:g}s"}
            )
            reply = await self.conn.request("PUT", "/v1/session/create", body.encode())
            self.session = reply.json()["ID"]
            last_renew = trio.current_time()
            for _ in range(10_000):  # bounded
                if self.hold is None:
                    await self._contend()
                else:
                    await trio.sleep(TTL / 2)
                    await self.conn.request("PUT", f"/v1/session/renew/{self.session}")
                    last_renew = trio.current_time()
                    entry = (await self.conn.request("GET", f"/v1/kv/{KEY}")).json()[0]
                    if entry.get("Session") != self.session:
                        self.hold.end = trio.current_time()
                        self.hold = None
                if self.hold is None and trio.current_time() - last_renew >= TTL / 2:
                    await self.conn.request("PUT", f"/v1/session/renew/{self.session}")
                    last_renew = trio.current_time()

    async def _contend(self) -> None:
        reply = await self.conn.request(
            "PUT", f"/v1/kv/{KEY}?acquire={self.session}", self.name.encode()
        )
        if reply.json() is True:
            self.hold = Hold(self.name, trio.current_time())
            self.history.append(self.hold)
            self.acquired.set()
            return
        current = await self.conn.request("GET", f"/v1/kv/{KEY}")
        holder = current.json()[0].get("Session") if current.status == 200 else None
        if not holder:
            await trio.sleep(RETRY)  # free but refused: the lock-delay runs; retry soon
            return
        # Held by someone else: wait for the key to change (at most TTL/2, to keep renewing).
        await self.conn.request("GET", f"/v1/kv/{KEY}?index={current.index}&wait={TTL / 2:g}s")


async def _any_acquired(contenders: list[Contender]) -> None:
    """Until a live contender holds the lock (each signals its acquisition)."""
    while not any(c.hold for c in contenders if c.killed_at is None):
        for contender in contenders:
            contender.acquired = trio.Event()
        async with trio.open_nursery() as nursery:
            for contender in contenders:
                nursery.start_soon(_wait_then_cancel, contender.acquired, nursery.cancel_scope)


async def _wait_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def assert_never_two_holders(history: list[Hold], now: float) -> None:
    spans = sorted((h.start, h.end if h.end is not None else now, h.name) for h in history)
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        assert start >= end, f"{second} held from {start} while {first} held until {end}"


async def test_three_clients_one_lock_holders_killed_never_two_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    async with cluster([SERVER, "node-a", "node-b"], network=network) as env:
        history: list[Hold] = []
        contenders = []
        for position, name in enumerate(("alpha", "bravo", "charlie")):
            conn = await TrioHTTP.connect(network, env.addresses[position])
            contenders.append(Contender(name, conn, history))
        observed: list[str] = []

        async def observe() -> None:
            conn = await TrioHTTP.connect(network, env.addresses[0])
            index = 1
            for _ in range(10_000):
                reply = await conn.request("GET", f"/v1/kv/{KEY}?index={index}&wait=30s")
                if reply.status == 200:
                    session = reply.json()[0].get("Session", "")
                    if not observed or observed[-1] != session:
                        observed.append(session)
                index = reply.index

        async with trio.open_nursery() as nursery:
            nursery.start_soon(observe)
            for contender in contenders:
                nursery.start_soon(contender.run)
            for round_ in range(2):
                with trio.fail_after(60):
                    await _any_acquired(contenders)
                holder = next(c for c in contenders if c.hold is not None and c.killed_at is None)
                await trio.sleep(30)  # it holds and renews for a while
                assert holder.hold is not None and holder.hold.end is None
                holder.kill()
                killed = trio.current_time()
                with trio.fail_after(2 * TTL + LOCK_DELAY + 2 * RETRY + 5):
                    await _any_acquired(contenders)
                successor = next(
                    c for c in contenders if c.hold is not None and c.killed_at is None
                )
                assert successor.hold is not None
                waited = successor.hold.start - killed
                # Not before the session could expire plus the lock-delay, not much after.
                assert TTL <= waited <= 2 * TTL + LOCK_DELAY + RETRY + 0.5, (round_, waited)
            await trio.sleep(30)
            nursery.cancel_scope.cancel()
        assert len(history) == 3 and len({h.name for h in history}) == 3
        assert_never_two_holders(history, trio.current_time())
        # The observer saw each holder, then the key free, then the next holder: no handover
        # from one session straight to another.
        holders = [s for s in observed if s]
        assert holders == [
            c.session
            for c in sorted(
                contenders, key=lambda c: next(h.start for h in history if h.name == c.name)
            )
        ]
        for before, after in itertools.pairwise(observed):
            assert not (before and after), observed
