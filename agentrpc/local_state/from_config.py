"""The services and checks of the agent's config files, decoded as the HTTP API decodes them
(pure).

A config file holds them under ``service`` (one object), ``services`` (a list), ``check`` and
``checks``, the keys of Consul 0.8's ``DecodeConfig``; :mod:`agentrpc.config` gathers them, as
plain objects with where they came from, and this module turns them into definitions with
:func:`~agentrpc.local_state.definitions.parse_service` and
:func:`~agentrpc.local_state.definitions.parse_check` (the same keys and texts as
``PUT /v1/agent/service/register`` and ``/v1/agent/check/register``). The config layer sits
below this one and cannot decode them itself; the agent calls :func:`config_definitions` at
start and on reload, and a definition refused is a :class:`~agentrpc.config.ConfigError` that
names the file, the key and the reason.

What the agent would refuse later is refused here, so that loading the definitions cannot
fail half-way: script and Docker checks, a check whose ``service_id`` is not a service of the
config files (or, on a server, the ``consul`` service), a service with the ID ``consul``, and
more than :data:`~agentrpc.config.MAX_CONFIG_DEFINITIONS` services and checks in all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..catalog.constants import CONSUL_SERVICE_ID
from ..config import MAX_CONFIG_DEFINITIONS, AgentConfig, ConfigDefinition, ConfigError
from .definitions import (
    ERR_SCRIPTS_DISABLED,
    CheckDefinition,
    DefinitionError,
    ServiceDefinition,
    parse_check,
    parse_service,
)

__all__ = ["ConfigCheck", "ConfigDefinitions", "config_definitions"]


@dataclass(frozen=True, slots=True)
class ConfigCheck:
    """A check of the config files and the ACL token it is registered with."""

    definition: CheckDefinition
    token: str = ""


@dataclass(frozen=True, slots=True)
class ConfigDefinitions:
    """The config files' services (their own checks inside) and checks, in file order (a
    later one of the same ID replaces an earlier one when they are loaded)."""

    services: tuple[ServiceDefinition, ...] = ()
    checks: tuple[ConfigCheck, ...] = ()

    @property
    def count(self) -> int:
        """Services plus checks, a service's own checks included."""
        return len(self.services) + sum(len(s.checks) for s in self.services) + len(self.checks)


def _script_only(check: CheckDefinition) -> bool:
    return check.script and not (check.ttl_ns or check.http or check.tcp)


def _token(body: dict[str, Any]) -> str:
    for key, value in body.items():
        if isinstance(key, str) and key.casefold() == "token":
            if not isinstance(value, str):
                raise DefinitionError("Request decode failed: 'Token' expected type 'string'")
            return value
    return ""


def _service(item: ConfigDefinition) -> ServiceDefinition:
    try:
        service = parse_service(item.body)
    except DefinitionError as exc:
        raise ConfigError(f"{item.source}: {exc}") from None
    if service.service.id == CONSUL_SERVICE_ID:
        raise ConfigError(
            f"{item.source}: the service ID {CONSUL_SERVICE_ID!r} is reserved (the servers' "
            "own service)"
        )
    if any(_script_only(check) for check in service.checks):
        raise ConfigError(f"{item.source}: {ERR_SCRIPTS_DISABLED}")
    return service


def _check(item: ConfigDefinition) -> ConfigCheck:
    try:
        check = parse_check(item.body)
        token = _token(item.body)
    except DefinitionError as exc:
        raise ConfigError(f"{item.source}: {exc}") from None
    if _script_only(check):
        raise ConfigError(f"{item.source}: {ERR_SCRIPTS_DISABLED}")
    return ConfigCheck(check, token)


def config_definitions(config: AgentConfig) -> ConfigDefinitions:
    """The definitions of ``config``'s ``services`` and ``checks``, decoded and checked;
    :class:`~agentrpc.config.ConfigError` naming the definition's file and key for the first
    one refused."""
    services = tuple(_service(item) for item in config.services)
    checks = tuple(_check(item) for item in config.checks)
    found = ConfigDefinitions(services, checks)
    if found.count > MAX_CONFIG_DEFINITIONS:
        raise ConfigError(
            f"the config files define {found.count} services and checks (a service's own "
            f"checks included); at most {MAX_CONFIG_DEFINITIONS} in all"
        )
    service_ids = {service.service.id for service in services}
    if config.server:
        service_ids.add(CONSUL_SERVICE_ID)
    for item, check in zip(config.checks, checks, strict=True):
        service_id = check.definition.service_id
        if service_id and service_id not in service_ids:
            raise ConfigError(
                f'{item.source}: ServiceID "{service_id}" does not exist (a check of the config '
                "files may only name a service of the config files)"
            )
    return found
