"""The plain values of one memberlist: what it is given (:class:`MemberlistConfig`) and what it
counts (:class:`MemberlistStats`).

Both are re-exported by :mod:`agentrpc.gossip.memberlist`, the place to import them from. They
live apart so that every part of the engine (the network side in
:mod:`~agentrpc.gossip.memberlist_net`, the schedule in
:mod:`~agentrpc.gossip.memberlist_schedule`, the engine itself) can share one config and one
set of counters without importing each other.

Resources: none (plain data, no trio; the optional ping delegate is the caller's object).
Errors: :class:`MemberlistConfig` raises ``ValueError`` at construction for a value the engine
could not run with; nothing else raises.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentrpc.gossip.contract import GossipAddress, PingDelegate
from agentrpc.gossip.messages import (
    LABEL_MAX_SIZE,
    PROTOCOL_VERSION_DEFAULT,
    PROTOCOL_VERSION_MAX,
    PROTOCOL_VERSION_MIN,
    Vsn,
)
from agentrpc.gossip.node_table import DEFAULT_MAX_MEMBERS
from agentrpc.gossip.profiles import LAN, GossipProfile
from agentrpc.gossip.security import Keyring
from agentrpc.gossip.versions import DEFAULT_VSN, check_vsn

__all__ = ["MemberlistConfig", "MemberlistStats"]


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberlistConfig:
    """Configuration of one memberlist instance."""

    name: str
    bind: GossipAddress
    """Where UDP and TCP are bound (an explicit IP; port 0 picks one free for both)."""
    advertise: GossipAddress | None = None
    """What other nodes are told to use; the bound address when None."""
    profile: GossipProfile = LAN
    keyring: Keyring | None = None
    gossip_verify_incoming: bool = True
    """With a keyring: reject plaintext packets and streams (False accepts them too)."""
    gossip_verify_outgoing: bool = True
    """With a keyring: encrypt what we send (False sends plaintext, for key rollout)."""
    label: str = ""
    """memberlist >= 0.3 label; empty for 0.2.x peers."""
    vsn: Vsn = DEFAULT_VSN
    """Versions advertised in alive and push/pull messages."""
    protocol_version: int = PROTOCOL_VERSION_DEFAULT
    """The memberlist protocol version whose behaviour we follow (encryption padding,
    port masking)."""
    max_members: int = DEFAULT_MAX_MEMBERS
    """Nodes the table holds at most, ourselves included (config ``gossip_max_members``)."""
    ping: PingDelegate | None = None
    """memberlist's ``Config.Ping``: the payload of our acks and the outcome of our direct
    probes (serf's network coordinates); None sends empty acks and hears nothing."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a memberlist needs a node name")
        if len(self.label.encode()) > LABEL_MAX_SIZE:
            raise ValueError(f"label is longer than {LABEL_MAX_SIZE} bytes")
        check_vsn(self.vsn)
        if not PROTOCOL_VERSION_MIN <= self.protocol_version <= PROTOCOL_VERSION_MAX:
            raise ValueError(f"unsupported protocol version {self.protocol_version}")
        if self.max_members < 1:
            raise ValueError(f"max_members must be positive, got {self.max_members}")


@dataclass(slots=True)
class MemberlistStats:
    """Counters of one memberlist instance (never reset)."""

    packets_received: int = 0
    packets_sent: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    bad_packets: int = 0
    """Packets dropped whole: bad label, failed decryption or CRC, undecodable."""
    bad_messages: int = 0
    """Messages inside packets that could not be decoded or handled (the rest still are)."""
    streams_accepted: int = 0
    bad_streams: int = 0
    """Inbound streams that failed: bad data, timeout, peer gone, too many push/pulls."""
    push_pulls: int = 0
    """Completed state exchanges, in either direction."""
    push_pull_failures: int = 0
    """Outbound push/pulls (joins included) that failed."""
    gossip_rounds: int = 0
    """Rounds the gossip loop ran (it sleeps while nothing is queued to gossip)."""
    probes: int = 0
    failed_probes: int = 0
    """Probes that ended in a suspicion."""
    streams_over_budget: int = 0
    """Inbound streams refused because all of them together had read too much."""
    refused_members: int = 0
    """Alive states (messages or push/pull entries) about unknown nodes ignored because the
    table held ``max_members`` nodes already."""
