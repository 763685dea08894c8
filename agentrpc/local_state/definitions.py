"""Service and check definitions as an agent takes them (HTTP bodies, config files), sans-I/O.

Decoding follows Consul 0.8's ``decodeBody`` with ``FixupCheckType``: keys match
case-insensitively, ``ttl``/``interval``/``timeout``/``deregister_critical_service_after`` are
Go durations as text (or nanoseconds as numbers), ``service_id`` is ``ServiceID``. Validation
raises :class:`DefinitionError` with the reference's text and HTTP status (400 unless said).

The agent runs TTL, HTTP and TCP checks. A script or Docker check is refused with the text a
Consul agent without script checks gives (500).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Final

from ..catalog.constants import HEALTH_CRITICAL, HEALTH_PASSING, HEALTH_WARNING
from ..catalog.go_text import GoDurationError, parse_duration
from ..catalog.structs import HealthCheck, NodeService

__all__ = [
    "CHECK_KIND_HTTP",
    "CHECK_KIND_TCP",
    "CHECK_KIND_TTL",
    "CheckDefinition",
    "DefinitionError",
    "ServiceDefinition",
    "parse_check",
    "parse_service",
]

CHECK_KIND_TTL: Final = "ttl"
CHECK_KIND_HTTP: Final = "http"
CHECK_KIND_TCP: Final = "tcp"

ERR_INVALID_CHECK: Final = "Must provide TTL or Script/DockerContainerID/HTTP/TCP and Interval"
ERR_SERVICE_CHECK_STATUS: Final = "Status for checks must 'passing', 'warning', 'critical'"
ERR_BAD_CHECK_STATUS: Final = "Bad check status"
ERR_SCRIPTS_DISABLED: Final = (
    "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' to true"
)
ERR_MISSING_SERVICE_NAME: Final = "Missing service name"
ERR_MISSING_CHECK_NAME: Final = "Missing check name"
VALID_STATUSES: Final = frozenset({HEALTH_PASSING, HEALTH_WARNING, HEALTH_CRITICAL})
MAX_HEADERS: Final = 64
"""Headers an HTTP check may send (each value bounded by :data:`MAX_FIELD_CHARS`)."""
MAX_FIELD_CHARS: Final = 4096
"""Characters of a definition's text field kept (names, notes, URLs, header values)."""


class DefinitionError(ValueError):
    """A definition the reference refuses; ``status`` is the HTTP status it answers with."""

    def __init__(self, text: str, status: int = 400) -> None:
        super().__init__(text)
        self.status = status


def _get(obj: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in obj:
            return obj[name]
    folded = {name.casefold().replace("_", "") for name in names}
    for key, value in obj.items():
        if isinstance(key, str) and key.casefold().replace("_", "") in folded:
            return value
    return None


def _text(obj: dict[str, Any], *names: str) -> str:
    value = _get(obj, *names)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DefinitionError(
            f"Request decode failed: '{names[0]}' expected type 'string', got "
            f"unconvertible type '{type(value).__name__}'"
        )
    return value[:MAX_FIELD_CHARS]


def _duration(obj: dict[str, Any], *names: str) -> int:
    value = _get(obj, *names)
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise DefinitionError(f"Request decode failed: '{names[0]}' expected a duration")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except GoDurationError as exc:
            raise DefinitionError(f"Request decode failed: {exc}") from None
    raise DefinitionError(f"Request decode failed: '{names[0]}' expected a duration")


def _bool(obj: dict[str, Any], *names: str) -> bool:
    value = _get(obj, *names)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise DefinitionError(f"Request decode failed: '{names[0]}' expected type 'bool'")
    return value


def _headers(obj: dict[str, Any]) -> dict[str, list[str]]:
    value = _get(obj, "Header")
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_HEADERS:
        raise DefinitionError("Request decode failed: 'Header' expected a map of string lists")
    headers: dict[str, list[str]] = {}
    for name, values in value.items():
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise DefinitionError("Request decode failed: 'Header' expected a map of string lists")
        headers[str(name)[:MAX_FIELD_CHARS]] = [v[:MAX_FIELD_CHARS] for v in values[:MAX_HEADERS]]
    return headers


@dataclass(frozen=True, slots=True)
class CheckDefinition:
    """One check the agent keeps: its identity and how it is run (``CheckType``)."""

    check_id: str
    name: str
    notes: str = ""
    service_id: str = ""
    status: str = ""
    """The initial status ("" is critical, as the reference starts every check)."""
    output: str = ""
    ttl_ns: int = 0
    http: str = ""
    tcp: str = ""
    interval_ns: int = 0
    timeout_ns: int = 0
    method: str = ""
    header: dict[str, list[str]] = field(default_factory=dict)
    tls_skip_verify: bool = False
    deregister_critical_after_ns: int = 0
    script: bool = False
    """A script or Docker check was asked for (refused when added)."""

    @property
    def kind(self) -> str:
        if self.ttl_ns > 0:
            return CHECK_KIND_TTL
        if self.http:
            return CHECK_KIND_HTTP
        if self.tcp:
            return CHECK_KIND_TCP
        return ""

    @property
    def valid(self) -> bool:
        """``CheckType.Valid``: a TTL, or a script/HTTP/TCP target with an interval."""
        return self.ttl_ns > 0 or (
            bool(self.http or self.tcp or self.script) and self.interval_ns > 0
        )

    def health_check(self, node: str, service_name: str = "") -> HealthCheck:
        """``CheckDefinition.HealthCheck``: critical unless a status was given."""
        return HealthCheck(
            node=node,
            check_id=self.check_id,
            name=self.name,
            status=self.status or HEALTH_CRITICAL,
            notes=self.notes,
            output=self.output,
            service_id=self.service_id,
            service_name=service_name,
        )


def _check_type(obj: dict[str, Any], *, check_id: str, name: str) -> CheckDefinition:
    script = any(
        _get(obj, key) not in (None, "", [])
        for key in ("Script", "Args", "ScriptArgs", "DockerContainerID", "GRPC")
    )
    return CheckDefinition(
        check_id=check_id,
        name=name,
        notes=_text(obj, "Notes"),
        service_id=_text(obj, "ServiceID"),
        status=_text(obj, "Status"),
        ttl_ns=_duration(obj, "TTL"),
        http=_text(obj, "HTTP"),
        tcp=_text(obj, "TCP"),
        interval_ns=_duration(obj, "Interval"),
        timeout_ns=_duration(obj, "Timeout"),
        method=_text(obj, "Method"),
        header=_headers(obj),
        tls_skip_verify=_bool(obj, "TLSSkipVerify"),
        deregister_critical_after_ns=_duration(obj, "DeregisterCriticalServiceAfter"),
        script=script,
    )


def parse_check(obj: Any) -> CheckDefinition:
    """``PUT /v1/agent/check/register``'s body (a ``CheckDefinition``): the name required,
    the ID defaulting to it, the status valid, the type valid."""
    if not isinstance(obj, dict):
        raise DefinitionError("Request decode failed: expected a JSON object")
    name = _text(obj, "Name")
    if not name:
        raise DefinitionError(ERR_MISSING_CHECK_NAME)
    status = _text(obj, "Status")
    if status and status not in VALID_STATUSES:
        raise DefinitionError(ERR_BAD_CHECK_STATUS)
    check_id = _text(obj, "ID", "CheckID") or name
    definition = _check_type(obj, check_id=check_id, name=name)
    if not definition.valid:
        raise DefinitionError(ERR_INVALID_CHECK)
    return definition


@dataclass(frozen=True, slots=True)
class ServiceDefinition:
    """``ServiceDefinition``: the service and its checks (IDs and names filled in)."""

    service: NodeService
    checks: tuple[CheckDefinition, ...] = ()
    token: str = ""


def parse_service(obj: Any) -> ServiceDefinition:
    """``PUT /v1/agent/service/register``'s body: the name required, the ID defaulting to it,
    each check valid; the checks named ``service:<id>`` (``service:<id>:<n>`` when there are
    several) and ``Service '<name>' check``, as ``ServiceDefinition.CheckTypes`` and
    ``AddService`` do."""
    if not isinstance(obj, dict):
        raise DefinitionError("Request decode failed: expected a JSON object")
    name = _text(obj, "Name")
    if not name:
        raise DefinitionError(ERR_MISSING_SERVICE_NAME)
    tags = _get(obj, "Tags")
    if tags is not None and (
        not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags)
    ):
        raise DefinitionError("Request decode failed: 'Tags' expected type '[]string'")
    port = _get(obj, "Port")
    if port is None:
        port = 0
    if isinstance(port, bool) or not isinstance(port, int | float) or int(port) != port:
        raise DefinitionError("Request decode failed: 'Port' expected type 'int'")
    service = NodeService(
        id=_text(obj, "ID") or name,
        service=name,
        tags=None if tags is None else tuple(tag[:MAX_FIELD_CHARS] for tag in tags),
        address=_text(obj, "Address"),
        port=int(port),
        enable_tag_override=_bool(obj, "EnableTagOverride"),
    )
    raw_checks: list[Any] = []
    single = _get(obj, "Check")
    if isinstance(single, dict):
        raw_checks.append(single)
    several = _get(obj, "Checks")
    if isinstance(several, list):
        raw_checks.extend(several)
    checks: list[CheckDefinition] = []
    for raw in raw_checks:
        if not isinstance(raw, dict):
            raise DefinitionError("Request decode failed: a check must be a JSON object")
        check = _check_type(raw, check_id="", name=_text(raw, "Name"))
        if not (check.ttl_ns or check.http or check.tcp or check.script or check.interval_ns):
            continue  # an empty check type is skipped (CheckTypes)
        if check.status and check.status not in VALID_STATUSES:
            raise DefinitionError(ERR_SERVICE_CHECK_STATUS)
        if not check.valid:
            raise DefinitionError(ERR_INVALID_CHECK)
        checks.append(replace(check, check_id=_text(raw, "CheckID", "ID")))
    named: list[CheckDefinition] = []
    for position, check in enumerate(checks, start=1):
        check_id = check.check_id or f"service:{service.id}"
        if not check.check_id and len(checks) > 1:
            check_id += f":{position}"
        named.append(
            replace(
                check,
                check_id=check_id,
                name=check.name or f"Service '{service.service}' check",
                service_id=service.id,
            )
        )
    return ServiceDefinition(service, tuple(named), _text(obj, "Token"))
