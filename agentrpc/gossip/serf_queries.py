"""Serf's queries, sans-I/O: dedupe, filters, the default timeout, responses and the collector.

A query (``messageQuery``) is gossiped on serf's query broadcast queue; every node that passes
its filters may ack it (flag 1) and respond, each by a ``messageQueryResponse`` sent straight to
the querier's ``Addr:Port`` over UDP, and, with a ``RelayFactor`` k, also through k other
members in a ``messageRelay`` wrapper. The rules here are serf's (serf.go ``handleQuery``,
``handleQueryResponse``; query.go; event.go):

* :class:`RecentQueries` (``queryBuffer``): a query is handled once per ``(LTime, ID)``; one
  before ``min_time`` or more than the buffer size behind the query clock is dropped (logged
  as serf does). A new query is rebroadcast unless flagged no-broadcast, even if its filters
  exclude us.
* :func:`should_process`: node filters (``[0] + msgpack [names]``) and tag filters
  (``[1] + msgpack {Tag, Expr}``, Go regexp matched anywhere in the tag value; run here by
  :mod:`~agentrpc.gossip.serf_regexp` in linear time).
* :func:`default_query_timeout`: ``GossipInterval * QueryTimeoutMult * ceil(log10(N + 1))``.
* :func:`build_response`: a response (or ack) checked against ``QueryResponseSizeLimit``.
* :class:`QueryCollector`: the querying side of one query: acks and responses by node,
  duplicates suppressed, nothing after the deadline.

Bounds against peers: the query buffer keeps at most :data:`MAX_QUERIES_PER_TIME` IDs per
Lamport time; a collector queues at most ``capacity`` undelivered acks and as many responses
(the rest dropped and counted, as serf's full channels drop them) and remembers at most
``max_responders`` node names per kind.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

from agentrpc.gossip.messages import GossipDecodeError
from agentrpc.gossip.serf_messages import (
    QUERY_FLAG_ACK,
    FilterType,
    NodeFilter,
    QueryResponse,
    TagFilter,
    decode_query_filter,
    encode_query_filter,
    encode_serf_message,
)
from agentrpc.gossip.serf_regexp import RegexpError, match_string
from agentrpc.log_protocol import clip

__all__ = [
    "DEFAULT_QUERY_TIMEOUT_MULT",
    "INTERNAL_QUERY_PREFIX",
    "MAX_QUERIES_PER_TIME",
    "MAX_RELAY_FACTOR",
    "QUERY_BUFFER_SIZE",
    "QUERY_RESPONSE_SIZE_LIMIT",
    "QUERY_SIZE_LIMIT",
    "QueryAck",
    "QueryCollector",
    "QueryError",
    "QueryItem",
    "QueryReply",
    "QueryVerdict",
    "RecentQueries",
    "build_response",
    "default_query_timeout",
    "encode_filters",
    "should_process",
]

QUERY_BUFFER_SIZE: Final = 512
"""Lamport times of queries remembered (serf's ``QueryBuffer``)."""
DEFAULT_QUERY_TIMEOUT_MULT: Final = 16
"""Serf's ``QueryTimeoutMult``."""
QUERY_RESPONSE_SIZE_LIMIT: Final = 1024
"""Serf's ``QueryResponseSizeLimit``: an encoded response (or relay) at most."""
QUERY_SIZE_LIMIT: Final = 1024
"""Serf's ``QuerySizeLimit``: an encoded query at most."""
MAX_QUERIES_PER_TIME: Final = 256
"""Query IDs one Lamport time keeps for dedupe (serf keeps any number)."""
MAX_RELAY_FACTOR: Final = 5
"""Relays we send per response at most, whatever the query asks (serf has no cap; a query
asking for 255 would make every node send 256 packets to one address)."""
INTERNAL_QUERY_PREFIX: Final = "_serf_"
"""Queries whose names start with this are serf's own, answered inside the layer."""
_NANOS: Final = 1_000_000_000


class QueryError(ValueError):
    """A query or response we refuse to send; the text is serf's."""


class QueryVerdict(Enum):
    """What :meth:`RecentQueries.record` made of a query."""

    NEW = "new"
    DUPLICATE = "duplicate"
    TOO_OLD = "too old"
    BEFORE_MIN_TIME = "before min time"


class RecentQueries:
    """Serf's ``queryBuffer`` plus ``queryMinTime``."""

    __slots__ = ("_slots", "dropped", "min_time", "size")

    def __init__(self, size: int = QUERY_BUFFER_SIZE) -> None:
        if size < 1:
            raise ValueError(f"the query buffer needs at least one slot, got {size}")
        self.size = size
        self._slots: dict[int, tuple[int, deque[int]]] = {}
        self.min_time = 0
        self.dropped = 0
        """Remembered query IDs forgotten early (a Lamport time past its bound)."""

    def record(self, ltime: int, query_id: int, clock_time: int) -> QueryVerdict:
        """Judge one query; a NEW one is remembered. ``clock_time`` is the query clock after
        it witnessed ``ltime``."""
        if ltime < self.min_time:
            return QueryVerdict.BEFORE_MIN_TIME
        if clock_time > self.size and ltime < clock_time - self.size:
            return QueryVerdict.TOO_OLD
        index = ltime % self.size
        slot = self._slots.get(index)
        if slot is not None and slot[0] == ltime:
            ids = slot[1]
            if query_id in ids:
                return QueryVerdict.DUPLICATE
        else:
            ids = deque()
            self._slots[index] = (ltime, ids)
        if len(ids) >= MAX_QUERIES_PER_TIME:
            ids.popleft()
            self.dropped += 1
        ids.append(query_id)
        return QueryVerdict.NEW


def default_query_timeout(
    gossip_interval: float, num_members: int, mult: int = DEFAULT_QUERY_TIMEOUT_MULT
) -> float:
    """Serf's ``DefaultQueryTimeout`` in seconds: ``GossipInterval * QueryTimeoutMult *
    ceil(log10(N + 1))``, N being memberlist's live member count."""
    return gossip_interval * mult * math.ceil(math.log10(max(0, num_members) + 1))


def encode_filters(
    nodes: Sequence[str] = (), tags: Mapping[str, str] | None = None
) -> tuple[bytes, ...]:
    """A query's ``Filters``: the node filter (if any names) then one tag filter per tag."""
    filters: list[bytes] = []
    if nodes:
        filters.append(encode_query_filter(NodeFilter(tuple(nodes))))
    for tag, expr in (tags or {}).items():
        filters.append(encode_query_filter(TagFilter(tag, expr)))
    return tuple(filters)


def should_process(
    filters: Sequence[bytes], node_name: str, tags: Mapping[str, str]
) -> tuple[bool, str | None]:
    """Whether a node called ``node_name`` with ``tags`` passes every filter, and the warning
    serf logs when a filter cannot be read (then it does not pass)."""
    for raw in filters:
        if not raw:
            return False, "query has unrecognized filter type: (empty)"
        kind = raw[0]
        if kind not in (FilterType.NODE, FilterType.TAG):
            return False, f"query has unrecognized filter type: {kind}"
        try:
            decoded = decode_query_filter(raw)
        except GossipDecodeError as exc:
            name = "filterNodeType" if kind == FilterType.NODE else "filterTagType"
            return False, f"failed to decode {name}: {clip(exc)}"
        if isinstance(decoded, NodeFilter):
            if node_name not in decoded.nodes:
                return False, None
            continue
        try:
            matched = match_string(decoded.expr, tags.get(decoded.tag, ""))
        except RegexpError as exc:
            return False, f"failed to compile filter regex ({clip(decoded.expr)}): {clip(exc)}"
        if not matched:
            return False, None
    return True, None


def build_response(
    ltime: int,
    query_id: int,
    from_node: str,
    payload: bytes = b"",
    *,
    ack: bool = False,
    limit: int = QUERY_RESPONSE_SIZE_LIMIT,
) -> tuple[QueryResponse, bytes]:
    """A response (or, with ``ack``, an ack) and its encoding; a response over ``limit``
    raises :class:`QueryError` with serf's text."""
    response = QueryResponse(
        ltime, query_id, from_node, QUERY_FLAG_ACK if ack else 0, bytes(payload)
    )
    raw = encode_serf_message(response)
    if not ack and len(raw) > limit:
        raise QueryError(f"response exceeds limit of {limit} bytes")
    return response, raw


def timeout_from_ns(nanoseconds: int) -> float:
    """A query's ``Timeout`` (Go nanoseconds) in seconds, never negative."""
    return max(0, nanoseconds) / _NANOS


def timeout_to_ns(seconds: float) -> int:
    return max(0, round(seconds * _NANOS))


# --------------------------------------------------------------------------------------------
# The querying side.


@dataclass(frozen=True, slots=True)
class QueryAck:
    """A node acknowledged the query."""

    from_node: str


@dataclass(frozen=True, slots=True)
class QueryReply:
    """A node's response to the query."""

    from_node: str
    payload: bytes


QueryItem = QueryAck | QueryReply


class QueryCollector:
    """What one query of ours has gathered (serf's ``QueryResponse``), fed the responses that
    arrive and drained by its owner; ``deadline`` is in the caller's clock.

    ``capacity`` bounds the undelivered acks and, separately, the undelivered responses (serf
    sizes its channels by the member count); ``max_responders`` bounds the names remembered
    for duplicate suppression."""

    __slots__ = (
        "_acks",
        "_closed",
        "_pending",
        "_pending_acks",
        "_pending_replies",
        "_responses",
        "capacity",
        "deadline",
        "dropped",
        "duplicates",
        "id",
        "ltime",
        "max_responders",
        "want_ack",
    )

    def __init__(
        self,
        query_id: int,
        ltime: int,
        deadline: float,
        *,
        want_ack: bool,
        capacity: int,
        max_responders: int,
    ) -> None:
        self.id = query_id
        self.ltime = ltime
        self.deadline = deadline
        self.want_ack = want_ack
        self.capacity = max(1, capacity)
        self.max_responders = max(1, max_responders)
        self._acks: set[str] = set()
        self._responses: set[str] = set()
        self._pending: deque[QueryItem] = deque()
        self._pending_acks = 0
        self._pending_replies = 0
        self._closed = False
        self.dropped = 0
        """Acks or responses dropped because the owner did not drain fast enough."""
        self.duplicates = 0

    @property
    def acks(self) -> frozenset[str]:
        """Nodes that acked."""
        return frozenset(self._acks)

    @property
    def responders(self) -> frozenset[str]:
        """Nodes that responded."""
        return frozenset(self._responses)

    def finished(self, now: float) -> bool:
        """Closed, or past the deadline."""
        return self._closed or now > self.deadline

    def close(self) -> None:
        self._closed = True

    def deliver(self, response: QueryResponse, now: float) -> str | None:
        """Take one response for this query (the caller matched LTime and ID). Returns
        serf's warning text when it had to be dropped, else None."""
        if self.finished(now):
            return None
        if response.is_ack:
            if not self.want_ack:
                return None
            if response.from_node in self._acks:
                self.duplicates += 1
                return None
            if self._pending_acks >= self.capacity or len(self._acks) >= self.max_responders:
                self.dropped += 1
                return "Failed to deliver query ack, dropping"
            self._acks.add(response.from_node)
            self._pending_acks += 1
            self._pending.append(QueryAck(response.from_node))
            return None
        if response.from_node in self._responses:
            self.duplicates += 1
            return None
        if self._pending_replies >= self.capacity or len(self._responses) >= self.max_responders:
            self.dropped += 1
            return "Failed to deliver query response, dropping"
        self._responses.add(response.from_node)
        self._pending_replies += 1
        self._pending.append(QueryReply(response.from_node, response.payload))
        return None

    def take(self) -> list[QueryItem]:
        """Everything gathered since the last call, in arrival order."""
        items = list(self._pending)
        self._pending.clear()
        self._pending_acks = self._pending_replies = 0
        return items

    def has_pending(self) -> bool:
        return bool(self._pending)
