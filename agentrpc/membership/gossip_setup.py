"""Building an agent's gossip pools: memberlist plus serf for LAN (and WAN on a server).

Kept apart from the agent so the wiring (which names, tags, profiles, keys and transports go
where) reads in one place, and so simulations can build pools the same way the agent does.
Also here: what the agent reads of a running memberlist (:func:`memberlist_stats`), the
handler that gives it the gossip streams arriving on the server port
(:func:`gossip_stream_handler`), and the one rule for turning a configured host into the
address a pool binds and advertises (:func:`resolve_ip`).

Errors: :func:`resolve_ip` (and so :func:`pool_specs`) raises :class:`HostResolutionError`
naming the host when DNS does not resolve it, never a made-up address; binding errors
(``OSError``) propagate from :func:`start_pool`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import trio

from ..config import AgentConfig
from ..gossip.contract import GossipAddress, GossipTransport
from ..gossip.memberlist import Memberlist, MemberlistConfig, MemberlistStats
from ..gossip.profiles import PROFILES
from ..gossip.security import Keyring, parse_key
from ..gossip.serf import SerfConfig
from ..gossip.transport import MemoryGossipNetwork, MemoryGossipTransport, UdpTcpTransport
from ..logs import LogHub
from ..protocol.bodies import IPAddress
from ..transports import AddressError, parse_address
from .gossip_pool import GossipPool

_MEMBERLIST_COUNTERS: Final = tuple(field.name for field in dataclasses.fields(MemberlistStats))


class HostResolutionError(Exception):
    """A host in the configuration that does not resolve to an IP address."""


def resolve_ip(host: str) -> IPAddress:
    """The IP address of ``host``: itself when it is one, else what DNS says (once, at start).

    Raises :class:`HostResolutionError` naming the host when DNS has no answer."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.ip_address(socket.gethostbyname(host))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise HostResolutionError(f"cannot resolve host {host!r}: {reason}") from exc


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """What one pool of this agent is: its kind, node name, bind address and profile."""

    kind: str  # "lan" or "wan"
    node_name: str
    bind: GossipAddress
    profile_name: str


def _bind_address(text: str) -> GossipAddress:
    address = parse_address(text)
    return GossipAddress(str(resolve_ip(address.host)), address.port)


def pool_specs(config: AgentConfig) -> list[PoolSpec]:
    """The LAN pool, and on a server the WAN pool whose member names are ``node.dc``."""
    specs = [
        PoolSpec("lan", config.node_name, _bind_address(config.serf_lan_addr),
                 config.gossip_lan_profile),
    ]  # fmt: skip
    if config.server:
        specs.append(
            PoolSpec("wan", f"{config.node_name}.{config.datacenter}",
                     _bind_address(config.serf_wan_addr), config.gossip_wan_profile)
        )  # fmt: skip
    return specs


def gossip_transport(network: MemoryGossipNetwork | None) -> GossipTransport:
    """UDP and TCP on real sockets, or an in-process network (tests, simulations)."""
    return MemoryGossipTransport(network) if network is not None else UdpTcpTransport()


def keyring_for(config: AgentConfig) -> Keyring | None:
    return Keyring(parse_key(config.encrypt)) if config.encrypt else None


def exposure_warning(kind: str, bind: GossipAddress, encrypted: bool) -> str | None:
    """The WARN to log when a pool gossips in plaintext on an address other hosts can reach
    (the gossip port's twin of the RPC port's missing ``rpc_token`` warning); None if not."""
    if encrypted:
        return None
    try:
        loopback = ipaddress.ip_address(bind.host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return (
        f"the {kind.upper()} gossip port is bound to a non-loopback address ({bind}) without "
        "encryption: anyone who can reach it can join the pool, read its gossip and send it "
        "made-up members (set encrypt)"
    )


async def start_pool(
    nursery: trio.Nursery,
    spec: PoolSpec,
    config: AgentConfig,
    tags: dict[str, str],
    hub: LogHub,
    transport: GossipTransport,
) -> tuple[GossipPool, Memberlist, GossipAddress]:
    """Build one pool and start its memberlist and serf maintenance in ``nursery``.

    Returns the pool, its memberlist and the address memberlist really bound (port 0 picks
    one). Binding errors (``OSError``) propagate from here, before anything else is started.
    Gossip in plaintext on a non-loopback address logs a WARN (:func:`exposure_warning`).
    ``config.gossip_max_members`` bounds both serf's and memberlist's state; change it later
    with :meth:`GossipPool.set_max_members` (or :meth:`Memberlist.set_max_members` for the
    node table alone).
    """
    keyring = keyring_for(config)
    pool = GossipPool(
        spec.kind,
        SerfConfig(
            node_name=spec.node_name,
            tags=tags,
            reconnect_timeout=config.reconnect_timeout,
            tombstone_timeout=config.tombstone_timeout,
            max_members=config.gossip_max_members,
        ),
        logger=hub.logger("serf"),
        encrypted=keyring is not None,
    )
    memberlist = Memberlist(
        MemberlistConfig(
            name=spec.node_name,
            bind=spec.bind,
            profile=PROFILES[spec.profile_name],
            keyring=keyring,
            max_members=config.gossip_max_members,
        ),
        pool.serf,
        pool.serf,
        hub.logger("memberlist"),
        transport,
    )
    pool.attach(memberlist)
    bound: GossipAddress = await nursery.start(memberlist.run)
    warning = exposure_warning(spec.kind, bound, keyring is not None)
    if warning is not None:
        hub.logger("memberlist").warn(warning)
    await nursery.start(pool.run)
    return pool, memberlist, bound


def memberlist_stats(memberlist: Memberlist) -> dict[str, str]:
    """A memberlist's counters as the ``stats`` command shows them (``memberlist_lan``/``_wan``),
    every value a string."""
    counters = memberlist.stats
    return {name: str(getattr(counters, name)) for name in _MEMBERLIST_COUNTERS}


def gossip_stream_handler(
    memberlist: Memberlist,
) -> Callable[[trio.abc.Stream, str], Awaitable[None]]:
    """The server port's byte-6 handler: hands each gossip stream to ``memberlist``.

    The peer's name becomes the stream's origin address; a peer without one (an in-process
    stream) is named ``0.0.0.0:0``, which memberlist uses only in its log lines."""

    async def serve(stream: trio.abc.Stream, peer: str) -> None:
        try:
            address = parse_address(peer)
            origin = GossipAddress(address.host, address.port)
        except AddressError:
            origin = GossipAddress("0.0.0.0", 0)
        await memberlist.serve_stream(stream, origin)

    return serve
