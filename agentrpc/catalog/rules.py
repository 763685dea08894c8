"""The endpoints' rules before anything is proposed to Raft, sans-I/O: validation with the
reference's error texts, the defaults it fills in, where a request must be served (locally,
by the leader, by another datacenter), a blocking query's wait, session IDs.

Every function raises :class:`RuleError` with the reference's text for a request the reference
refuses, or returns the normalized request / decision. Time and randomness come in as
arguments.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Final

from .constants import (
    DEFAULT_QUERY_TIME_NS,
    ERR_MUST_PROVIDE_ID,
    ERR_MUST_PROVIDE_KEY,
    ERR_MUST_PROVIDE_NODE_AND_ADDRESS,
    ERR_MUST_PROVIDE_SERVICE_NAME_WITH_ID,
    ERR_MUST_PROVIDE_SESSION_NODE,
    HEALTH_CRITICAL,
    HEALTH_MAINTENANCE,
    HEALTH_PASSING,
    HEALTH_WARNING,
    JITTER_FRACTION,
    KVS_DELETE_TREE,
    KVS_LOCK,
    MAX_QUERY_TIME_NS,
    NODE_MAINTENANCE_CHECK_ID,
    SERVICE_MAINTENANCE_PREFIX,
    SESSION_CREATE,
    SESSION_DELETE,
    SESSION_DESTROY,
    SESSION_RELEASE,
    SESSION_TTL_MAX_NS,
)
from .go_text import GoDurationError, format_duration, parse_duration
from .structs import DirEntry, HealthCheck, RegisterRequest, Session

__all__ = [
    "Route",
    "aggregated_status",
    "RuleError",
    "blocking_wait_ns",
    "check_kvs_apply",
    "format_session_id",
    "node_id_error",
    "prepare_register",
    "prepare_session",
    "route",
    "session_ttl_ns",
    "validate_node_meta",
]

META_KEY_RESERVED_PREFIX: Final = "consul-"
"""``metaKeyReservedPrefix``: node-meta keys the user may not set."""
META_MAX_KEY_PAIRS: Final = 64
META_KEY_MAX_LENGTH: Final = 128
META_VALUE_MAX_LENGTH: Final = 512
_META_KEY: Final = re.compile(r"[a-zA-Z0-9_-]+")
"""``metaKeyFormat`` (``^[a-zA-Z0-9_-]+$``, whole string)."""
ERR_BAD_NODE_ID: Final = "Bad node ID: "


class RuleError(ValueError):
    """A request the reference refuses before Raft; the message is its error text."""


class Route(enum.Enum):
    """Where a request is served (``forward`` in ``consul/rpc.go``)."""

    LOCAL = "local"
    DATACENTER = "datacenter"
    LEADER = "leader"


def route(
    request_dc: str, local_dc: str, *, is_read: bool, allow_stale: bool, is_leader: bool
) -> Route:
    """Another datacenter first; then a stale read is served here; else the leader serves.
    An empty Datacenter means the local one (as modern Consul; 0.7's agent always sets it)."""
    if request_dc and request_dc != local_dc:
        return Route.DATACENTER
    if is_read and allow_stale:
        return Route.LOCAL
    return Route.LOCAL if is_leader else Route.LEADER


def prepare_register(request: RegisterRequest) -> RegisterRequest:
    """``Catalog.Register``'s checks and defaults: node and address required, a node ID (when
    given) a UUID (``Bad node ID: ...``, as 0.8), the service ID
    defaults to its name, ``Check`` joins ``Checks``, a check's ID defaults to its name and its
    node to the request's."""
    if not request.node or not request.address:
        raise RuleError(ERR_MUST_PROVIDE_NODE_AND_ADDRESS)
    if request.id:
        problem = node_id_error(request.id)
        if problem is not None:
            raise RuleError(ERR_BAD_NODE_ID + problem)
    service = request.service
    if service is not None:
        if not service.id and service.service:
            service = replace(service, id=service.service)
        if service.id and not service.service:
            raise RuleError(ERR_MUST_PROVIDE_SERVICE_NAME_WITH_ID)
    checks = list(request.checks) if request.checks is not None else None
    if request.check is not None:
        checks = [*(checks or ()), request.check]
    if checks is not None:
        checks = [
            replace(
                check,
                check_id=check.check_id or check.name,
                node=check.node or request.node,
            )
            for check in checks
        ]
    return replace(request, service=service, check=None, checks=checks)


def node_id_error(node_id: str) -> str | None:
    """Why ``node_id`` is not a UUID, in hashicorp/go-uuid's ``ParseUUID`` words (lengths in
    UTF-8 bytes, as Go's); None when it is one (either case of hex)."""
    raw = node_id.encode("utf-8", "surrogateescape")
    if len(raw) != 36:
        return "uuid string is wrong length"
    if raw[8:9] != b"-" or raw[13:14] != b"-" or raw[18:19] != b"-" or raw[23:24] != b"-":
        return "uuid is improperly formatted"
    digits = raw[0:8] + raw[9:13] + raw[14:18] + raw[19:23] + raw[24:36]
    for byte in digits:
        if not (48 <= byte <= 57 or 65 <= byte <= 70 or 97 <= byte <= 102):
            char = chr(byte)
            shown = f" '{char}'" if char.isprintable() else ""
            return f"encoding/hex: invalid byte: U+{byte:04X}{shown}"
    return None


def _meta_pair_error(key: str, value: str) -> str | None:
    if not key:
        return "Key cannot be blank"
    if _META_KEY.fullmatch(key) is None:
        return "Key contains invalid characters"
    if len(key) > META_KEY_MAX_LENGTH:
        return f"Key is too long (limit: {META_KEY_MAX_LENGTH} characters)"
    if key.startswith(META_KEY_RESERVED_PREFIX):
        return f"Key prefix '{META_KEY_RESERVED_PREFIX}' is reserved for internal use"
    if len(value.encode("utf-8", "surrogateescape")) > META_VALUE_MAX_LENGTH:
        return f"Value is too long (limit: {META_VALUE_MAX_LENGTH} characters)"
    return None


def validate_node_meta(meta: Mapping[str, str] | None) -> None:
    """``structs.ValidateMetadata`` (0.7.3+/0.8, for the agent's ``node_meta``): at most 64
    pairs; each key non-blank, of ``[a-zA-Z0-9_-]``, at most 128 characters, not under
    ``consul-``; each value at most 512 bytes. The first bad pair (in key order: Go's map
    order is random) is named in the reference's text."""
    if not meta:
        return
    if len(meta) > META_MAX_KEY_PAIRS:
        raise RuleError(
            f"Node metadata cannot contain more than {META_MAX_KEY_PAIRS} key/value pairs"
        )
    for key in sorted(meta):
        value = meta[key]
        problem = _meta_pair_error(key, value)
        if problem is not None:
            raise RuleError(f"Couldn't load metadata pair ('{key}', '{value}'): {problem}")


def check_kvs_apply(op: str, entry: DirEntry, *, lock_delay_until: float, now: float) -> bool:
    """``kvsPreApply``: a key is required (but by delete-tree); a lock is refused (False)
    while the key's lock-delay runs, which only the leader's clock decides."""
    if not entry.key and op != KVS_DELETE_TREE:
        raise RuleError(ERR_MUST_PROVIDE_KEY)
    return not (op == KVS_LOCK and lock_delay_until > now)


def session_ttl_ns(ttl: str) -> int:
    """A session's TTL in ns (0: none); ``ValueError`` with the reference's text when bad."""
    if ttl in ("", "0", "0s", "0m", "0h"):
        return 0
    try:
        return parse_duration(ttl)
    except GoDurationError as exc:
        raise ValueError(f"Invalid Session TTL '{ttl}': {exc}") from None


def prepare_session(op: str, session: Session, *, ttl_min_ns: int) -> Session:
    """``Session.Apply``'s checks: an ID to destroy, a Node to create, a known Behavior
    (default release), a TTL that parses and lies in [min, 24h]."""
    if not session.id and op == SESSION_DESTROY:
        raise RuleError(ERR_MUST_PROVIDE_ID)
    if not session.node and op == SESSION_CREATE:
        raise RuleError(ERR_MUST_PROVIDE_SESSION_NODE)
    behavior = session.behavior or SESSION_RELEASE
    if behavior not in (SESSION_RELEASE, SESSION_DELETE):
        raise RuleError(f"Invalid Behavior setting '{session.behavior}'")
    if session.ttl:
        try:
            ttl = parse_duration(session.ttl)
        except GoDurationError as exc:
            raise RuleError(f"Session TTL '{session.ttl}' invalid: {exc}") from None
        if ttl != 0 and (ttl < ttl_min_ns or ttl > SESSION_TTL_MAX_NS):
            raise RuleError(
                f"Invalid Session TTL '{ttl}', must be between "
                f"[{format_duration(ttl_min_ns)}={format_duration(SESSION_TTL_MAX_NS)}]"
            )
    return replace(session, behavior=behavior)


def format_session_id(random16: bytes) -> str:
    """``uuid.GenerateUUID`` (hashicorp/go-uuid): 16 random bytes as 8-4-4-4-12 hex."""
    if len(random16) != 16:
        raise ValueError("a session ID needs 16 random bytes")
    h = random16.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def blocking_wait_ns(max_query_time_ns: int, stagger: float) -> int:
    """How long a blocking query waits: MaxQueryTime clamped (above 600 s: 600 s; 0 or
    less: 300 s), plus ``lib.RandomStagger(t / 16)`` drawn from ``stagger`` in [0, 1)."""
    wait = max_query_time_ns
    if wait > MAX_QUERY_TIME_NS:
        wait = MAX_QUERY_TIME_NS
    elif wait <= 0:
        wait = DEFAULT_QUERY_TIME_NS
    return wait + int(stagger * (wait // JITTER_FRACTION))


def aggregated_status(checks: Iterable[HealthCheck]) -> str:
    """The one status a set of checks adds up to (the API's ``AggregatedStatus``): a
    maintenance check wins, then critical, warning, passing (also for no checks); "" when a
    check has a status outside those."""
    seen = set()
    for check in checks:
        if check.check_id == NODE_MAINTENANCE_CHECK_ID or check.check_id.startswith(
            SERVICE_MAINTENANCE_PREFIX
        ):
            seen.add(HEALTH_MAINTENANCE)
            continue
        if check.status not in (HEALTH_PASSING, HEALTH_WARNING, HEALTH_CRITICAL):
            return ""
        seen.add(check.status)
    for status in (HEALTH_MAINTENANCE, HEALTH_CRITICAL, HEALTH_WARNING):
        if status in seen:
            return status
    return HEALTH_PASSING
