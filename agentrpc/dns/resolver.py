"""One DNS question from query to response, as Consul 0.7's ``command/agent/dns.go`` answers
it (pure: no I/O, no trio; time and randomness come from the caller).

A :class:`Resolution` is a small state machine in the h11 style. The caller hands it a parsed
query and pulls actions: :meth:`Resolution.start` gives either a :class:`Respond` (the reply's
bytes, ready to send) or a :class:`CatalogCall` (an endpoint of the server port and its
request body). The caller makes that call in-process and feeds the reply body to
:meth:`Resolution.receive`, or the error text to :meth:`Resolution.fail`, and gets the next
action. A resolution asks for at most two calls: a stale read whose ``LastContact`` exceeds
``max_stale`` is asked again without ``AllowStale``, once. Log lines come back as
:class:`Note` values on the :class:`Respond` (kind, level, text with peer strings clipped),
for the caller's throttled log.

What it answers (the reference's behaviour, and where this one differs, in ``docs/dns.md``):

- nodes (``Catalog.NodeServices``): A, AAAA, or a CNAME for a non-IP address; ANY as A/AAAA;
  any other type (TXT, MX, CNAME, SRV, ...) an empty NOERROR without a lookup, and a known
  node without a record of the asked type an empty NOERROR too, both without an SOA, as the
  reference (``nodeLookup`` answers only ANY, A and AAAA);
- services (``Health.ServiceNodes``): instances with a critical check dropped (and warning
  ones too with ``only_passing``), shuffled, deduplicated by address (A/AAAA/ANY) or by node,
  address and port (SRV, target ``<node>.node.<dc>.<domain>``, its A/AAAA in the additional
  section); TTLs from ``service_ttl`` (or ``*``), ``node_ttl`` for nodes;
- prepared queries (``PreparedQuery.Execute``), ``.addr.`` names, reverse lookups
  (``Catalog.ListNodes``), the apex's SOA;
- NXDOMAIN with the SOA in the authority section for a name that names nothing; NOERROR
  with no answer and the SOA for a service (or prepared query) with healthy instances but no
  record of the asked type (TXT, MX, ...);
- over UDP, without EDNS (or with a buffer of at most 512 bytes), at most
  ``udp_answer_limit`` answers (at most 8) and 512 bytes; with EDNS0, the query's buffer size
  up to ``max_udp_size``; over TCP up to 65535 bytes. Answers that do not fit are dropped
  from the end with the additional records they needed; the TC bit says so when
  ``enable_truncate`` is set (always when a reply could not be cut to fit otherwise).
"""

from __future__ import annotations

import functools
import ipaddress
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV
import dns.reversename
import dns.rrset

from ..catalog.constants import HEALTH_CRITICAL, HEALTH_PASSING, SECOND_NS
from ..catalog.go_text import GoDurationError, parse_duration
from ..catalog.structs import (
    DCSpecificRequest,
    HealthCheck,
    Node,
    NodeService,
    NodeSpecificRequest,
    QueryOptions,
    ServiceSpecificRequest,
    Wire,
    WireDecodeError,
    as_map,
    get_int,
    get_str,
)
from ..hostport import unmapped_ip
from ..log_protocol import ERR, WARN, clip
from .names import (
    AddrLookup,
    ApexLookup,
    InvalidName,
    Lookup,
    NodeLookup,
    OutsideDomain,
    QueryLookup,
    ReverseLookup,
    ServiceLookup,
    parse_name,
)
from .settings import CLASSIC_UDP_SIZE, DNSConfig
from .wire import Transport, max_answers, new_response, render, size_limit

__all__ = [
    "ERR_QUERY_NOT_FOUND",
    "SOA_EXPIRE",
    "SOA_REFRESH",
    "SOA_RETRY",
    "Action",
    "CatalogCall",
    "Note",
    "Resolution",
    "Respond",
    "servfail",
]

SOA_REFRESH: Final = 3600
SOA_RETRY: Final = 600
SOA_EXPIRE: Final = 86400
SOA_MINTTL: Final = 0
ERR_QUERY_NOT_FOUND: Final = "Query not found"
"""``consul.ErrQueryNotFound``: a prepared query name that names nothing (NXDOMAIN)."""

_IN: Final = dns.rdataclass.IN
_A: Final = dns.rdatatype.A
_AAAA: Final = dns.rdatatype.AAAA
_ANY: Final = dns.rdatatype.ANY
_CNAME: Final = dns.rdatatype.CNAME
_SOA: Final = dns.rdatatype.SOA
_SRV: Final = dns.rdatatype.SRV
_NODE_TYPES: Final = frozenset({_ANY, _A, _AAAA, _CNAME})
"""The types a node's record is formatted for (``formatNodeRecord``)."""
_NODE_LOOKUP_TYPES: Final = frozenset({_ANY, _A, _AAAA})
"""The types a node lookup answers (``nodeLookup``); any other is an empty NOERROR."""


@dataclass(frozen=True, slots=True)
class CatalogCall:
    """Call ``method`` on the server port in-process with request body ``args``."""

    method: str
    args: Wire


@dataclass(frozen=True, slots=True)
class Note:
    """A line for the caller's throttled log."""

    level: int
    kind: str
    text: str


@dataclass(frozen=True, slots=True)
class Respond:
    """Send ``wire``; the resolution is over."""

    wire: bytes
    rcode: int
    answers: int
    truncated: bool
    notes: tuple[Note, ...] = ()


Action = CatalogCall | Respond


@dataclass(slots=True)
class _Instance:
    node: Node
    service: NodeService
    checks: list[HealthCheck] = field(default_factory=list)


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Go's ``net.ParseIP`` then ``To4``: an IPv4-mapped IPv6 address is IPv4; zones are not
    addresses."""
    if "%" in text:
        return None
    return unmapped_ip(text)


def _name_of(text: str) -> dns.name.Name | None:
    """``dns.Fqdn(text)`` as a name, None when it cannot be one (empty or long labels)."""
    try:
        return dns.name.from_text(text)
    except dns.exception.DNSException:
        return None


# dnspython's rdata constructors are untyped: each is wrapped once, here. Rdata are immutable,
# so the address records (the hot path) are built once per address and shared, in a bounded
# cache.
_RDATA_CACHE: Final = 4096


@functools.lru_cache(maxsize=_RDATA_CACHE)
def _a(ip: str) -> dns.rdata.Rdata:
    return dns.rdtypes.IN.A.A(_IN, _A, ip)  # type: ignore[no-untyped-call]


@functools.lru_cache(maxsize=_RDATA_CACHE)
def _aaaa(ip: str) -> dns.rdata.Rdata:
    return dns.rdtypes.IN.AAAA.AAAA(_IN, _AAAA, ip)  # type: ignore[no-untyped-call]


def _cname(target: dns.name.Name) -> dns.rdata.Rdata:
    return dns.rdtypes.ANY.CNAME.CNAME(_IN, _CNAME, target)  # type: ignore[no-untyped-call]


def _ptr(target: dns.name.Name) -> dns.rdata.Rdata:
    return dns.rdtypes.ANY.PTR.PTR(_IN, dns.rdatatype.PTR, target)  # type: ignore[no-untyped-call]


def _srv(port: int, target: dns.name.Name) -> dns.rdata.Rdata:
    return dns.rdtypes.IN.SRV.SRV(_IN, _SRV, 1, 1, port, target)  # type: ignore[no-untyped-call]


@functools.lru_cache(maxsize=16)
def _domain_name(domain: str) -> dns.name.Name:
    return dns.name.from_text(domain)


def _rrset(name: dns.name.Name, ttl: int, rdata: dns.rdata.Rdata) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, rdata.rdclass, rdata.rdtype)
    rrset.update_ttl(ttl)
    rrset.add(rdata)
    return rrset


def _nodes_list(reply: Wire, key: str) -> list[Any]:
    value = reply.get(key)
    if value is None:
        return []
    if type(value) is not list:
        raise WireDecodeError(f"msgpack decode error: {key}: expected a list")
    return value


def _instance(obj: object) -> _Instance:
    m = as_map(obj, "CheckServiceNode")
    checks = _nodes_list(m, "Checks")
    return _Instance(
        Node.from_wire(m.get("Node")),
        NodeService.from_wire(m.get("Service")),
        [HealthCheck.from_wire(c) for c in checks if c is not None],
    )


def _healthy(instance: _Instance, only_passing: bool) -> bool:
    """``CheckServiceNodes.Filter``: no critical check, and with ``only_passing`` none that is
    not passing."""
    for check in instance.checks:
        if check.status == HEALTH_CRITICAL or (only_passing and check.status != HEALTH_PASSING):
            return False
    return True


def servfail(query: dns.message.Message, payload: int) -> bytes:
    """A SERVFAIL for ``query`` (the caller's answer when resolution itself went wrong)."""
    response = new_response(query, payload)
    response.flags &= ~dns.flags.AA
    response.set_rcode(dns.rcode.SERVFAIL)
    return render(response, size_limit(query, "udp", payload)).wire


class Resolution:
    """Resolve the first question of ``query``; see the module's docstring for the protocol.

    ``datacenter`` and ``node_name`` are the local agent's; ``now`` is wall-clock seconds (the
    SOA serial); ``rng`` shuffles service instances."""

    def __init__(
        self,
        query: dns.message.Message,
        *,
        config: DNSConfig,
        datacenter: str,
        node_name: str = "",
        transport: Transport,
        now: float,
        rng: random.Random,
    ) -> None:
        self.config = config
        self.datacenter = datacenter
        self.node_name = node_name
        self.transport: Transport = transport
        self._query = query
        question = query.question[0]
        self.qname: dns.name.Name = question.name
        self.qtype: int = question.rdtype
        self._domain = _domain_name(config.domain)
        self._now = now
        self._rng = rng
        self._limit = size_limit(query, transport, config.max_udp_size)
        self._response = new_response(query, config.max_udp_size)
        self._notes: list[Note] = []
        self.lookup: Lookup = parse_name(self.qname, self._domain, datacenter)
        self._call: CatalogCall | None = None
        self._extras: dict[dns.name.Name, list[dns.rrset.RRset]] = {}
        """The address records of each SRV target (the additional section's candidates)."""
        self._more = False
        """Some answers were not built: more instances than a reply could hold."""
        self._allow_stale = config.allow_stale
        self.calls = 0
        """Catalog calls asked for so far (at most two)."""
        self.done = False

    # ------------------------------------------------------------------ protocol

    def start(self) -> Action:
        lookup = self.lookup
        if self.qtype == _SOA and not isinstance(lookup, OutsideDomain | ApexLookup):
            # The reference adds the SOA up front when the question asks for one.
            self._add_soa()
        if isinstance(lookup, OutsideDomain):
            return self._servfail(authoritative=False)
        if isinstance(lookup, ApexLookup):
            return self._apex()
        if isinstance(lookup, InvalidName):
            self._note(WARN, "dns:qname-invalid", f"dns: QName invalid: {clip(lookup.text)}")
            return self._nxdomain()
        if isinstance(lookup, AddrLookup):
            return self._addr(lookup)
        if isinstance(lookup, NodeLookup) and self.qtype not in _NODE_LOOKUP_TYPES:
            # The reference returns before its lookup: NOERROR, no answer, no SOA (but the
            # one an SOA question got above), whether the node exists or not.
            return self._finish()
        return self._ask()

    def receive(self, reply: Any) -> Action:
        """The reply body of the call asked for."""
        self._expect_call()
        try:
            body = as_map(reply, "reply")
            last_contact = get_int(body, "LastContact", "reply")
            if self._allow_stale and last_contact > self.config.max_stale_ns:
                self._allow_stale = False
                self._note(WARN, "dns:too-stale", "dns: Query results too stale, re-requesting")
                return self._ask()
            lookup = self.lookup
            if isinstance(lookup, NodeLookup):
                return self._node_answer(lookup, body)
            if isinstance(lookup, ServiceLookup):
                return self._service_answer(lookup, body)
            if isinstance(lookup, QueryLookup):
                return self._query_answer(lookup, body)
            return self._reverse_answer(body)
        except WireDecodeError as exc:
            self._note(ERR, "dns:bad-reply", f"dns: rpc error: {clip(exc)}")
            return self._servfail()

    def fail(self, error: str) -> Action:
        """The call failed with ``error`` (the RPC's error text, or why there was none)."""
        self._expect_call()
        if isinstance(self.lookup, QueryLookup) and error == ERR_QUERY_NOT_FOUND:
            return self._nxdomain()
        if isinstance(self.lookup, ReverseLookup):
            return self._servfail(recursion_available=True)
        self._note(ERR, "dns:rpc-error", f"dns: rpc error: {clip(error)}")
        return self._servfail()

    # ------------------------------------------------------------------ plumbing

    def _expect_call(self) -> None:
        if self._call is None or self.done:
            raise RuntimeError("no catalog call is outstanding")

    def _note(self, level: int, kind: str, text: str) -> None:
        self._notes.append(Note(level, kind, text))

    def _options(self) -> QueryOptions:
        return QueryOptions(token=self.config.token, allow_stale=self._allow_stale)

    def _ask(self) -> CatalogCall:
        lookup = self.lookup
        args: Wire
        if isinstance(lookup, NodeLookup):
            method = "Catalog.NodeServices"
            args = NodeSpecificRequest(lookup.datacenter, lookup.node, self._options()).to_wire()
        elif isinstance(lookup, ServiceLookup):
            method = "Health.ServiceNodes"
            args = ServiceSpecificRequest(
                lookup.datacenter,
                lookup.service,
                lookup.tag,
                tag_filter=lookup.tag != "",
                options=self._options(),
            ).to_wire()
        elif isinstance(lookup, QueryLookup):
            method = "PreparedQuery.Execute"
            args = _execute_request(lookup, self._options(), self.datacenter, self.node_name)
        else:
            method = "Catalog.ListNodes"
            args = DCSpecificRequest(self.datacenter, options=self._options()).to_wire()
        self.calls += 1
        self._call = CatalogCall(method, args)
        return self._call

    def _answer_cap(self) -> int:
        """Answers worth building: ``udp_answer_limit`` for a plain UDP query, else as many
        as could ever fit in the size the query allows (so a large service costs no more
        than its reply can hold)."""
        if self.transport == "udp" and self._limit <= CLASSIC_UDP_SIZE:
            return self.config.answer_limit()
        return max_answers(self._limit)

    def _room_for_answer(self) -> bool:
        """Whether one more answer may be built; past the cap, remember that some were left
        out (TC when ``enable_truncate``)."""
        if len(self._response.answer) < self._answer_cap():
            return True
        self._more = True
        return False

    def _additional_for(self, answers: Iterable[dns.rrset.RRset]) -> list[dns.rrset.RRset]:
        """``syncExtra``: the address records of the SRV targets among ``answers``, once each."""
        kept: list[dns.rrset.RRset] = []
        done: set[dns.name.Name] = set()
        for rrset in answers:
            for target in _targets(rrset):
                if target not in done:
                    done.add(target)
                    kept += self._extras.get(target, ())
        return kept

    def _needs(self, rrset: dns.rrset.RRset) -> list[dns.rrset.RRset]:
        return [extra for target in _targets(rrset) for extra in self._extras.get(target, ())]

    def _finish(self, *, service: bool = False) -> Respond:
        """Render the response within the size the query allows. For a service answer, TC
        says that answers were left out only with ``enable_truncate``, as the reference."""
        response = self._response
        flag_trimmed = not service or self.config.enable_truncate
        if self._more and flag_trimmed:
            response.flags |= dns.flags.TC
        if self._extras:
            response.additional = self._additional_for(response.answer)
        rendered = render(
            response,
            self._limit,
            needs=self._needs if self._extras else None,
            flag_trimmed=flag_trimmed,
        )
        self.done = True
        return Respond(
            rendered.wire,
            response.rcode(),
            len(response.answer) - rendered.answers_dropped,
            rendered.truncated,
            tuple(self._notes),
        )

    def _soa(self) -> dns.rrset.RRset:
        domain = self._domain
        soa = dns.rdtypes.ANY.SOA.SOA(  # type: ignore[no-untyped-call]
            _IN,
            _SOA,
            dns.name.Name((b"ns", *domain.labels)),
            dns.name.Name((b"postmaster", *domain.labels)),
            int(self._now) & 0xFFFFFFFF,
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            SOA_MINTTL,
        )
        return _rrset(domain, 0, soa)

    def _add_soa(self) -> None:
        if not self._response.authority:
            self._response.authority.append(self._soa())

    def _nxdomain(self) -> Respond:
        self._add_soa()
        self._response.set_rcode(dns.rcode.NXDOMAIN)
        return self._finish()

    def _servfail(
        self, *, authoritative: bool = True, recursion_available: bool = False
    ) -> Respond:
        response = self._response
        response.answer, response.authority, response.additional = [], [], []
        if not authoritative:
            response.flags &= ~dns.flags.AA
        if recursion_available:
            response.flags |= dns.flags.RA
        response.set_rcode(dns.rcode.SERVFAIL)
        return self._finish()

    def _apex(self) -> Respond:
        if self.qtype in (_SOA, _ANY):
            self._response.answer.append(self._soa())
        else:
            self._add_soa()
        return self._finish()

    def _addr(self, lookup: AddrLookup) -> Respond:
        address = lookup.address
        ttl = self.config.node_ttl()
        rdata = _a(str(address)) if address.version == 4 else _aaaa(str(address))
        self._response.answer.append(_rrset(self.qname, ttl, rdata))
        return self._finish()

    def _translate(self, datacenter: str, node: Node) -> str:
        """``translateAddress``: a node of another datacenter by its ``wan`` address when
        ``translate_wan_addrs`` is set."""
        if self.config.translate_wan_addrs and datacenter != self.datacenter:
            wan = (node.tagged_addresses or {}).get("wan", "")
            if wan:
                return wan
        return node.address

    def _node_records(
        self, address: str, name: dns.name.Name, qtype: int, ttl: int
    ) -> list[dns.rrset.RRset]:
        """``formatNodeRecord``: A or AAAA for an IP, a CNAME for a name (no recursors, so no
        further records)."""
        ip = _parse_ip(address)
        if ip is not None:
            if ip.version == 4 and qtype in (_ANY, _A):
                return [_rrset(name, ttl, _a(str(ip)))]
            if ip.version == 6 and qtype in (_ANY, _AAAA):
                return [_rrset(name, ttl, _aaaa(str(ip)))]
            return []
        if qtype not in _NODE_TYPES:
            return []
        target = _name_of(address)
        if target is None:
            return []
        return [_rrset(name, ttl, _cname(target))]

    def _node_target(self, node: str, datacenter: str) -> dns.name.Name | None:
        """``<node>.node.<dc>.<domain>``; None when that is not a valid name."""
        try:
            labels = [part.encode("utf-8", "surrogateescape") for part in node.split(".")]
            labels += [b"node", datacenter.encode("utf-8", "surrogateescape")]
            return dns.name.Name((*labels, *self._domain.labels))
        except (dns.exception.DNSException, UnicodeError):
            return None

    # ------------------------------------------------------------------ answers

    def _node_answer(self, lookup: NodeLookup, body: Wire) -> Respond:
        found = body.get("NodeServices")
        if found is None:
            return self._nxdomain()
        node = Node.from_wire(as_map(found, "NodeServices").get("Node"))
        records = self._node_records(
            self._translate(lookup.datacenter, node),
            self.qname,
            self.qtype,
            self.config.node_ttl(),
        )
        # No record of the asked type (an A question for an IPv6 node): an empty NOERROR
        # without an SOA, as the reference.
        self._response.answer.extend(records)
        return self._finish()

    def _service_answer(self, lookup: ServiceLookup, body: Wire) -> Respond:
        instances = [
            instance
            for instance in (_instance(obj) for obj in _nodes_list(body, "Nodes"))
            if _healthy(instance, self.config.only_passing)
        ]
        if not instances:
            return self._nxdomain()
        self._rng.shuffle(instances)
        ttl = self.config.service_ttl(lookup.service)
        return self._instances_answer(instances, lookup.datacenter, ttl)

    def _instances_answer(
        self, instances: Sequence[_Instance], datacenter: str, ttl: int
    ) -> Respond:
        if self.qtype == _SRV:
            self._srv_records(instances, datacenter, ttl)
        else:
            self._address_records(instances, datacenter, ttl)
        if not self._response.answer:
            self._add_soa()
        return self._finish(service=True)

    def _address_records(self, instances: Iterable[_Instance], datacenter: str, ttl: int) -> None:
        """``serviceNodeRecords``: one record per distinct address."""
        seen: set[str] = set()
        answer = self._response.answer
        for instance in instances:
            address = instance.service.address or self._translate(datacenter, instance.node)
            if address in seen:
                continue
            seen.add(address)
            records = self._node_records(address, self.qname, self.qtype, ttl)
            if records and not self._room_for_answer():
                return
            answer.extend(records)

    def _srv_records(self, instances: Iterable[_Instance], datacenter: str, ttl: int) -> None:
        """``serviceSRVRecords``: one SRV per distinct node, service address and port; the
        target's address records in the additional section (once per target)."""
        seen: set[tuple[str, str, int]] = set()
        response = self._response
        for instance in instances:
            node, service = instance.node, instance.service
            key = (node.node, service.address, service.port)
            if key in seen:
                continue
            seen.add(key)
            target = self._node_target(node.node, datacenter)
            if target is None or not 0 <= service.port <= 0xFFFF:
                continue
            if not self._room_for_answer():
                return
            response.answer.append(_rrset(self.qname, ttl, _srv(service.port, target)))
            if target not in self._extras:
                address = service.address or self._translate(datacenter, node)
                self._extras[target] = self._node_records(address, target, _ANY, ttl)

    def _query_answer(self, lookup: QueryLookup, body: Wire) -> Respond:
        what = "PreparedQueryExecuteResponse"
        service = get_str(body, "Service", what)
        datacenter = get_str(body, "Datacenter", what) or lookup.datacenter
        ttl_text = get_str(as_map(body.get("DNS"), what), "TTL", what)
        if ttl_text:
            try:
                ttl = min(parse_duration(ttl_text), 0xFFFFFFFF * SECOND_NS) // SECOND_NS
            except GoDurationError:
                self._note(
                    WARN,
                    "dns:query-ttl",
                    f"dns: Failed to parse TTL '{clip(ttl_text)}' for prepared query "
                    f"'{clip(lookup.query)}', ignoring",
                )
                ttl = 0
            ttl = max(ttl, 0)
        else:
            ttl = self.config.service_ttl(service)
        instances = [_instance(obj) for obj in _nodes_list(body, "Nodes")]
        if not instances:
            return self._nxdomain()
        return self._instances_answer(instances, datacenter, ttl)

    def _reverse_answer(self, body: Wire) -> Respond:
        for obj in _nodes_list(body, "Nodes"):
            node = Node.from_wire(obj)
            try:
                reverse = dns.reversename.from_address(node.address)
            except (dns.exception.DNSException, ValueError):
                continue
            if reverse != self.qname:
                continue
            target = self._node_target(node.node, self.datacenter)
            if target is None:
                continue
            ptr = _ptr(target)
            self._response.answer.append(_rrset(self.qname, 0, ptr))
            return self._finish()
        # Nothing here: the reference recurses, and without recursors fails.
        return self._servfail(recursion_available=True)


def _targets(rrset: dns.rrset.RRset) -> list[dns.name.Name]:
    if rrset.rdtype != _SRV:
        return []
    return [rdata.target for rdata in rrset]


def _execute_request(
    lookup: QueryLookup, options: QueryOptions, datacenter: str, node_name: str
) -> Wire:
    """``structs.PreparedQueryExecuteRequest`` with the local agent as the source of distance
    sorting, keys as go-msgpack writes them."""
    fields: Wire = {
        "Agent": {"Datacenter": datacenter, "Node": node_name},
        "Datacenter": lookup.datacenter,
        "Limit": 0,
        "QueryIDOrName": lookup.query,
        "Source": {"Datacenter": "", "Node": ""},
        **options.wire_fields(),
    }
    return dict(sorted(fields.items()))
