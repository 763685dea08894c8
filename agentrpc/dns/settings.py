"""The DNS interface's settings and wire limits, once (pure: no I/O, no trio).

:class:`DNSConfig` holds what Consul 0.7 reads from its ``domain`` key and its ``dns_config``
object (``node_ttl``, ``service_ttl``, ``allow_stale``, ``max_stale``, ``only_passing``,
``enable_truncate``, ``udp_answer_limit``) plus ``translate_wan_addrs`` and the agent's ACL
token, which the reference's DNS server also reads. Durations are int64 nanoseconds, as Go's
``time.Duration``, so that TTLs come out as the reference computes them
(``uint32(ttl / time.Second)``). :func:`parse_dns_config` reads Consul's ``dns_config`` object
as a config file holds it (durations as Go text, ``"10s"``), with one clear error per bad key.

The defaults are Consul 0.7.1's: ``allow_stale`` true, ``max_stale`` ten years (``87600h``),
TTLs 0, ``udp_answer_limit`` 3 (and never more than 8), truncation off, domain ``consul.``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ..catalog.constants import HOUR_NS, MAX_INT64, SECOND_NS
from ..catalog.go_text import GoDurationError, parse_duration
from ..defaults import DEFAULT_DNS_ADDR, DNS_PORT

__all__ = [
    "CLASSIC_UDP_SIZE",
    "DEFAULT_DNS_ADDR",
    "DEFAULT_DOMAIN",
    "DEFAULT_MAX_STALE_NS",
    "DEFAULT_MAX_UDP_SIZE",
    "DEFAULT_UDP_ANSWER_LIMIT",
    "DNS_PORT",
    "MAX_TCP_MESSAGE",
    "MAX_UDP_ANSWER_LIMIT",
    "DNSConfig",
    "DNSConfigError",
    "normalize_domain",
    "parse_dns_config",
]

DEFAULT_DOMAIN: Final = "consul."

DEFAULT_UDP_ANSWER_LIMIT: Final = 3
"""Answers in a UDP response to a query without EDNS (``udp_answer_limit``)."""
MAX_UDP_ANSWER_LIMIT: Final = 8
"""The reference's hard cap on ``udp_answer_limit`` (``maxUDPAnswerLimit``)."""
DEFAULT_MAX_STALE_NS: Final = 87600 * HOUR_NS
"""``max_stale``: ten years since Consul 0.7.1, so any server may answer."""

CLASSIC_UDP_SIZE: Final = 512
"""RFC 1035's UDP message size, for queries without EDNS (or asking for less)."""
DEFAULT_MAX_UDP_SIZE: Final = 4096
"""The largest EDNS0 buffer size honoured (and the one advertised in replies): a query asking
for more gets at most this much over UDP, whatever it claims."""
MAX_TCP_MESSAGE: Final = 65535
"""A DNS message over TCP is prefixed by a 16-bit length."""

_MAX_TTL_NS: Final = 0xFFFFFFFF * SECOND_NS


class DNSConfigError(ValueError):
    """A DNS setting that cannot be used; the message names the key."""


def normalize_domain(domain: str) -> str:
    """The domain as the server matches it: lower case, fully qualified (``consul.``)."""
    text = domain.strip().lower()
    if not text or text == ".":
        raise DNSConfigError("domain must not be empty")
    return text if text.endswith(".") else text + "."


@dataclass(frozen=True, slots=True)
class DNSConfig:
    """What the DNS interface answers with; every field has the reference's default."""

    domain: str = DEFAULT_DOMAIN
    node_ttl_ns: int = 0
    service_ttl_ns: Mapping[str, int] = field(default_factory=dict)
    """TTL per service name; ``"*"`` is the default for services not listed."""
    allow_stale: bool = True
    max_stale_ns: int = DEFAULT_MAX_STALE_NS
    only_passing: bool = False
    enable_truncate: bool = False
    udp_answer_limit: int = DEFAULT_UDP_ANSWER_LIMIT
    translate_wan_addrs: bool = False
    """Answer with a node's ``wan`` tagged address for nodes of other datacenters."""
    token: str = ""
    """The ACL token sent with every catalog lookup (the agent's ``acl_token``)."""
    max_udp_size: int = DEFAULT_MAX_UDP_SIZE

    def __post_init__(self) -> None:
        object.__setattr__(self, "domain", normalize_domain(self.domain))
        object.__setattr__(self, "service_ttl_ns", dict(self.service_ttl_ns))
        for name, value in (("node_ttl", self.node_ttl_ns), ("max_stale", self.max_stale_ns)):
            if value < 0:
                raise DNSConfigError(f"dns_config.{name} must not be negative")
        for service, ttl in self.service_ttl_ns.items():
            if ttl < 0:
                raise DNSConfigError(f"dns_config.service_ttl[{service!r}] must not be negative")
        if self.udp_answer_limit <= 0:
            raise DNSConfigError("dns_config.udp_answer_limit must be > 0")
        if not CLASSIC_UDP_SIZE <= self.max_udp_size <= MAX_TCP_MESSAGE:
            raise DNSConfigError(
                f"max_udp_size must be between {CLASSIC_UDP_SIZE} and {MAX_TCP_MESSAGE}"
            )

    def node_ttl(self) -> int:
        """The TTL of node records, in whole seconds."""
        return _ttl_seconds(self.node_ttl_ns)

    def service_ttl(self, service: str) -> int:
        """The TTL of a service's records, in whole seconds: the service's own entry (its name
        in lower case, as the reference looks it up), else ``"*"``, else 0."""
        table = self.service_ttl_ns
        ttl = table.get(service.lower())
        if ttl is None:
            ttl = table.get("*", 0)
        return _ttl_seconds(ttl)

    def answer_limit(self) -> int:
        """Answers in a UDP response without EDNS: ``udp_answer_limit``, at most 8."""
        return min(MAX_UDP_ANSWER_LIMIT, self.udp_answer_limit)


def _ttl_seconds(ns: int) -> int:
    return min(ns, _MAX_TTL_NS) // SECOND_NS


def _duration(raw: Mapping[str, Any], key: str) -> int | None:
    if key not in raw:
        return None
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DNSConfigError(f'dns_config.{key} must be a duration such as "10s"')
    if isinstance(value, int):
        # A bare number is nanoseconds, as Go's mapstructure decodes one into a Duration.
        ns = value
    else:
        try:
            ns = parse_duration(value)
        except GoDurationError as exc:
            raise DNSConfigError(f"dns_config.{key}: {exc}") from None
    if not 0 <= ns <= MAX_INT64:
        raise DNSConfigError(f"dns_config.{key} must not be negative")
    return ns


def _flag(raw: Mapping[str, Any], key: str) -> bool | None:
    if key not in raw:
        return None
    value = raw[key]
    if not isinstance(value, bool):
        raise DNSConfigError(f"dns_config.{key} must be true or false")
    return value


_KEYS: Final = frozenset(
    {
        "allow_stale",
        "max_stale",
        "node_ttl",
        "service_ttl",
        "enable_truncate",
        "only_passing",
        "udp_answer_limit",
        "recursor_timeout",
        "disable_compression",
        "translate_wan_addrs",
    }
)


def parse_dns_config(
    raw: Mapping[str, Any],
    *,
    domain: str = DEFAULT_DOMAIN,
    translate_wan_addrs: bool = False,
    token: str = "",
) -> DNSConfig:
    """A :class:`DNSConfig` from Consul's ``dns_config`` object; :class:`DNSConfigError`
    names the first bad key. ``recursor_timeout`` and ``disable_compression`` are accepted and
    have no effect (there are no recursors; replies are always compressed).

    ``translate_wan_addrs`` is a top-level key in Consul (the agent passes its config's as
    the keyword); ``dns_config.translate_wan_addrs`` sets it too, and wins when both are
    given."""
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise DNSConfigError(f"dns_config: unknown key {unknown[0]!r}")
    values: dict[str, Any] = {}
    for key, name in (("node_ttl", "node_ttl_ns"), ("max_stale", "max_stale_ns")):
        ns = _duration(raw, key)
        if ns is not None:
            values[name] = ns
    for key in ("allow_stale", "only_passing", "enable_truncate", "translate_wan_addrs"):
        flag = _flag(raw, key)
        if flag is not None:
            values[key] = flag
    if "udp_answer_limit" in raw:
        limit = raw["udp_answer_limit"]
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise DNSConfigError("dns_config.udp_answer_limit must be an integer")
        values["udp_answer_limit"] = limit
    if "service_ttl" in raw:
        table = raw["service_ttl"]
        if not isinstance(table, Mapping):
            raise DNSConfigError("dns_config.service_ttl must map service names to durations")
        ttls: dict[str, int] = {}
        for service, text in table.items():
            if not isinstance(service, str):
                raise DNSConfigError("dns_config.service_ttl keys must be service names")
            ns = _duration({f"service_ttl[{service!r}]": text}, f"service_ttl[{service!r}]")
            assert ns is not None
            ttls[service] = ns
        values["service_ttl_ns"] = ttls
    values.setdefault("translate_wan_addrs", translate_wan_addrs)
    return DNSConfig(domain=domain, token=token, **values)
