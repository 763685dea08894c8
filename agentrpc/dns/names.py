"""Query names to lookups, as Consul 0.7's ``dispatch`` reads them (pure: no I/O, no trio).

Under the domain (``consul.`` by default), read from the right:

- ``<node>.node[.<dc>]``: a node (a node name may hold dots);
- ``[<tag>.]<service>.service[.<dc>]``: a service, optionally one tag (a tag may hold dots);
- ``_<service>._<tag>.service[.<dc>]``: the RFC 2782 form; the tag ``tcp`` means no tag;
- ``<name>.query[.<dc>]``: a prepared query;
- ``<hex>.addr[.<dc>]``: an address spelled in hex (8 digits IPv4, 32 digits IPv6);
- any other last label is a datacenter and the rest is read again, as the reference does
  (so ``web.service.dc2.consul`` asks dc2).

The name is read in lower case, as the reference lower-cases the whole question
(``strings.ToLower``) before parsing: keywords (``node``, ``service``, ``query``, ``addr``,
``tcp``) match in any case, and the node, service, tag, query and datacenter names sent to
the catalog are lower case (the catalog compares node and service names case-insensitively,
as Consul's state store, so ``Web.service.consul`` finds ``web``). Only ASCII letters are
folded here: a DNS label's other bytes are not letters to DNS (RFC 4343). The answer's owner
name is the question as the client spelled it (the resolver's business). Names under
``arpa.`` are reverse lookups; the domain itself is the apex; anything else is outside the
domain.
"""

from __future__ import annotations

import binascii
import ipaddress
from dataclasses import dataclass
from typing import Final

import dns.name

__all__ = [
    "ARPA",
    "AddrLookup",
    "ApexLookup",
    "InvalidName",
    "Lookup",
    "NodeLookup",
    "OutsideDomain",
    "QueryLookup",
    "ReverseLookup",
    "ServiceLookup",
    "label_text",
    "parse_name",
]

ARPA: Final = dns.name.from_text("arpa.")


@dataclass(frozen=True, slots=True)
class NodeLookup:
    datacenter: str
    node: str


@dataclass(frozen=True, slots=True)
class ServiceLookup:
    datacenter: str
    service: str
    tag: str
    """"" for no tag filter."""


@dataclass(frozen=True, slots=True)
class QueryLookup:
    datacenter: str
    query: str


@dataclass(frozen=True, slots=True)
class AddrLookup:
    address: ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class ReverseLookup:
    """A name under ``arpa.`` (answered from the node list)."""


@dataclass(frozen=True, slots=True)
class ApexLookup:
    """The domain itself."""


@dataclass(frozen=True, slots=True)
class InvalidName:
    """A name under the domain that names nothing (NXDOMAIN); ``text`` is the part below the
    domain, for the log line."""

    text: str


@dataclass(frozen=True, slots=True)
class OutsideDomain:
    """Neither under the domain nor under ``arpa.``: the reference, without recursors, fails
    it (SERVFAIL)."""


Lookup = (
    NodeLookup
    | ServiceLookup
    | QueryLookup
    | AddrLookup
    | ReverseLookup
    | ApexLookup
    | InvalidName
    | OutsideDomain
)


def label_text(label: bytes) -> str:
    """A label as the catalog's names are held: UTF-8, any other byte kept (surrogateescape),
    as the project's codecs carry Go strings."""
    return label.decode("utf-8", "surrogateescape")


def parse_name(qname: dns.name.Name, domain: dns.name.Name, datacenter: str) -> Lookup:
    """What ``qname`` asks for; ``datacenter`` is the local one (used when the name has none)."""
    if not qname.is_subdomain(domain):
        if qname.is_subdomain(ARPA):
            return ReverseLookup()
        return OutsideDomain()
    relative = qname.relativize(domain)
    labels = [label_text(label.lower()) for label in relative.labels]
    if not labels:
        return ApexLookup()
    text = relative.to_text().lower()
    # Each pass strips one label as the datacenter: at most as many passes as labels.
    while labels:
        n = len(labels)
        keyword = labels[-1]
        if keyword == "service":
            if n == 1:
                break
            if n == 3 and labels[0].startswith("_") and labels[1].startswith("_"):
                tag = labels[1][1:]
                return ServiceLookup(datacenter, labels[0][1:], "" if tag == "tcp" else tag)
            tag = ".".join(labels[: n - 2]) if n >= 3 else ""
            return ServiceLookup(datacenter, labels[n - 2], tag)
        if keyword == "node":
            if n == 1:
                break
            return NodeLookup(datacenter, ".".join(labels[:-1]))
        if keyword == "query":
            if n == 1:
                break
            return QueryLookup(datacenter, ".".join(labels[:-1]))
        if keyword == "addr":
            address = _hex_address(labels[0]) if n == 2 else None
            if address is None:
                break
            return AddrLookup(address)
        datacenter = labels.pop()
    return InvalidName(text)


def _hex_address(label: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if len(label) not in (8, 32):
        return None
    try:
        raw = binascii.unhexlify(label.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None
    return ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)
