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
from ..gossip.serf import MemberEvent, SerfConfig
from ..gossip.serf_coordinates import SerfCoordinates
from ..gossip.transport import MemoryGossipNetwork, MemoryGossipTransport, UdpTcpTransport
from ..logs import LogHub
from ..protocol.bodies import IPAddress
from ..transports import AddressError, parse_address
from .gossip_pool import GossipPool
from .keyring_file import KeyringFileError, load_keyring, write_keyring

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
    *,
    keyring_file: str = "",
    on_member_event: Callable[[MemberEvent], None] | None = None,
) -> tuple[GossipPool, Memberlist, GossipAddress]:
    """Build one pool and start its memberlist and serf maintenance in ``nursery``.

    Returns the pool, its memberlist and the address memberlist really bound (port 0 picks
    one). Binding errors (``OSError``) propagate from here, before anything else is started.
    Gossip in plaintext on a non-loopback address logs a WARN (:func:`exposure_warning`).
    ``config.gossip_max_members`` bounds both serf's and memberlist's state; change it later
    with :meth:`GossipPool.set_max_members` (or :meth:`Memberlist.set_max_members` for the
    node table alone).

    ``keyring_file`` (Consul's ``<data_dir>/serf/local.keyring`` or ``remote.keyring``, see
    :func:`~agentrpc.membership.keyring_file.keyring_path`): when the file exists, its keys
    replace ``encrypt``; when it does not and ``encrypt`` is set, it is created with that key
    (as Consul does); every keyring change of the pool is written back to it. A file that
    cannot be read or written raises :class:`~agentrpc.membership.keyring_file.KeyringFileError`
    naming the file, before anything is started.

    Unless ``config.disable_coordinates``, the pool keeps serf's network coordinates
    (:attr:`GossipPool.coordinates`): memberlist's acks carry ours, its probes teach us the
    peers'. ``on_member_event`` hears every member event of the pool (after the coordinates,
    which forget a reaped member).
    """
    try:
        keyring = await pool_keyring(config, keyring_file)
    except KeyringFileError as exc:
        raise KeyringFileError(f"keyring file {keyring_file}: {exc}") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise KeyringFileError(f"keyring file {keyring_file}: {reason}") from exc
    profile = PROFILES[spec.profile_name]
    coordinates = (
        None
        if config.disable_coordinates
        else SerfCoordinates(
            spec.node_name, logger=hub.logger("serf"), max_nodes=config.gossip_max_members
        )
    )
    listeners = [
        listener
        for listener in (
            coordinates.on_member_event if coordinates is not None else None,
            on_member_event,
        )
        if listener is not None
    ]

    def member_event(event: MemberEvent) -> None:
        for listener in listeners:
            listener(event)

    pool = GossipPool(
        spec.kind,
        SerfConfig(
            node_name=spec.node_name,
            tags=tags,
            reconnect_timeout=config.reconnect_timeout,
            tombstone_timeout=config.tombstone_timeout,
            max_members=config.gossip_max_members,
            gossip_interval=profile.gossip_interval,
            keyring_file=keyring_file,
        ),
        logger=hub.logger("serf"),
        encrypted=keyring is not None,
        keyring=keyring,
        on_event=member_event if listeners else None,
        coordinates=coordinates,
    )
    memberlist = Memberlist(
        MemberlistConfig(
            name=spec.node_name,
            bind=spec.bind,
            profile=profile,
            keyring=keyring,
            max_members=config.gossip_max_members,
            ping=coordinates,
        ),
        pool.delegate,
        pool.delegate,
        hub.logger("memberlist"),
        transport,
        conflict=pool.delegate,
    )
    pool.attach(memberlist)
    bound: GossipAddress = await nursery.start(memberlist.run)
    warning = exposure_warning(spec.kind, bound, keyring is not None)
    if warning is not None:
        hub.logger("memberlist").warn(warning)
    await nursery.start(pool.run)
    return pool, memberlist, bound


async def pool_keyring(config: AgentConfig, keyring_file: str = "") -> Keyring | None:
    """The keyring a pool starts with: the keyring file's when it exists, else ``encrypt``'s
    key (written to a new keyring file when one is named)."""
    keyring = keyring_for(config)
    if not keyring_file:
        return keyring
    loaded = await load_keyring(keyring_file)
    if loaded is not None:
        return loaded
    if keyring is not None:
        await write_keyring(keyring_file, keyring)
    return keyring


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
