"""The agent's membership pools (LAN, and WAN on a server), and everything the agent needs of
gossip: it imports these names and never reaches into :mod:`agentrpc.gossip` itself.

- :mod:`.pool`: the :class:`MembershipPool` interface the commands act on, and
  :class:`LocalPool` (the local node alone, no gossip).
- :mod:`.gossip_pool`: :class:`GossipPool`, a pool over serf and a running memberlist (user
  events, queries, key operations, event subscriptions).
- :mod:`.keyring_file`: each pool's keyring file (Consul's names), read and written off the
  event loop.
- :mod:`.gossip_setup`: building and starting an agent's gossip pools from its config, the
  memberlist counters ``stats`` shows, the server port's gossip-stream handler, and the
  resolution of configured hosts.

Also re-exported, as types the agent's interface names: :class:`Memberlist` (what
:func:`start_pool` returns), :class:`GossipAddress` (the address a pool bound) and
:class:`MemoryGossipNetwork` (gossip without sockets, for tests and simulations).
"""

from __future__ import annotations

from ..gossip.contract import GossipAddress
from ..gossip.memberlist import Memberlist
from ..gossip.transport import MemoryGossipNetwork
from .gossip_pool import (
    EventSubscription,
    GossipPool,
    KeyResponse,
    PoolEvent,
    PoolShutdown,
    QueryAck,
    QueryReply,
    QueryStream,
    join_error_text,
    member_of,
)
from .gossip_setup import (
    HostResolutionError,
    PoolSpec,
    gossip_stream_handler,
    gossip_transport,
    memberlist_stats,
    pool_keyring,
    pool_specs,
    resolve_ip,
    start_pool,
)
from .keyring_file import KeyringFileError, keyring_path
from .pool import LocalPool, MembershipPool

__all__ = [
    "EventSubscription",
    "GossipAddress",
    "GossipPool",
    "HostResolutionError",
    "KeyResponse",
    "KeyringFileError",
    "LocalPool",
    "Memberlist",
    "MembershipPool",
    "MemoryGossipNetwork",
    "PoolEvent",
    "PoolShutdown",
    "PoolSpec",
    "QueryAck",
    "QueryReply",
    "QueryStream",
    "gossip_stream_handler",
    "gossip_transport",
    "join_error_text",
    "keyring_path",
    "member_of",
    "memberlist_stats",
    "pool_keyring",
    "pool_specs",
    "resolve_ip",
    "start_pool",
]
