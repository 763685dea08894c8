"""The agent's configuration: defaults, JSON/TOML files, command-line overrides, validation.

Precedence, lowest first: built-in defaults, each ``--config-file`` in the order given, then the
flags given on the command line. :func:`load_config` is pure apart from reading the files, so
``reload`` can build a new config, validate it, and keep the old one when the new one is bad.
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import tomllib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from . import defaults
from .budget import DEFAULT_AGENT_BYTES, DEFAULT_CONNECTION_BYTES
from .gossip.node_table import DEFAULT_MAX_MEMBERS
from .gossip.profiles import PROFILES
from .gossip.security import KeyringError, parse_key
from .log_protocol import parse_level
from .logs import DEFAULT_RING_BYTES
from .protocol.constants import DEFAULT_MAX_FRAME_SIZE
from .raft.timing import CONSUL_DEFAULT_RAFT_MULTIPLIER, CONSUL_MAX_RAFT_MULTIPLIER
from .serverport.tls import TLSConfig, TLSConfigError
from .transports import AddressError, parse_address

MAX_CONFIG_FILE_SIZE: Final = 1 << 20
"""Config files larger than this (1 MiB) are refused, at start and on reload."""

DEFAULT_RETRY_INTERVAL: Final = 30.0
"""Seconds between two attempts of ``retry_join`` (and ``retry_join_wan``), as Consul."""
MAX_JOIN_ADDRESSES: Final = 1024
"""Addresses one of ``start_join``, ``retry_join``, ... may list."""
MAX_CONFIG_DEFINITIONS: Final = 2048
"""Services and checks the config files may define in all (a service's own checks count too);
the agent's local state holds twice as many, so HTTP registrations keep room."""


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class ConfigDefinition:
    """One service or check definition of a config file, as the file holds it.

    This layer only checks its shape (an object); the local state's layer decodes and
    validates it as the HTTP API does
    (:func:`agentrpc.local_state.from_config.config_definitions`), naming :attr:`source` in
    its errors."""

    source: str
    """Where it was defined: ``<file>: services[2]``, ``<file>: check``, ..."""
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AgentConfig:
    node_name: str = field(default_factory=socket.gethostname)
    datacenter: str = "dc1"
    server: bool = True
    rpc_addr: str = defaults.DEFAULT_RPC_ADDR
    serf_lan_addr: str = defaults.DEFAULT_SERF_LAN_ADDR
    serf_wan_addr: str = defaults.DEFAULT_SERF_WAN_ADDR
    server_addr: str = defaults.DEFAULT_SERVER_ADDR
    log_level: str = "INFO"
    rpc_token: str = ""
    rpc_max_conns_per_client: int = defaults.SERVER_MAX_CONNS_PER_CLIENT
    """Connections at once from one IP on the server port (0: no limit)."""
    server_first_byte_timeout: float = defaults.FIRST_BYTE_TIMEOUT
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    verify_incoming: bool = False
    verify_outgoing: bool = False
    encrypt: str = ""
    """Base64 gossip key (16, 24 or 32 bytes), as ``serf agent -encrypt``; "" for plaintext."""
    gossip_lan_profile: str = "lan"
    gossip_wan_profile: str = "wan"
    reconnect_timeout: float = 86400.0
    tombstone_timeout: float = 86400.0
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    handshake_timeout: float = defaults.HANDSHAKE_TIMEOUT
    idle_timeout: float = defaults.IDLE_TIMEOUT
    max_connections: int = defaults.MAX_CONNECTIONS
    max_connections_per_client: int = defaults.MAX_CONNECTIONS_PER_CLIENT
    max_inflight: int = defaults.MAX_INFLIGHT
    rpc_spin_us: int = 0
    """Microseconds an agent RPC connection polls its socket before it blocks on a read (0:
    never; the opt-in low-latency mode, which costs CPU while a client is between requests)."""
    monitor_queue_size: int = defaults.MONITOR_QUEUE
    send_queue_size: int = defaults.SEND_QUEUE
    drain_timeout: float = defaults.DRAIN_TIMEOUT
    send_queue_bytes: int = DEFAULT_CONNECTION_BYTES
    """Bytes one connection (agent RPC, server-port stream) may hold queued to send."""
    agent_send_bytes: int = DEFAULT_AGENT_BYTES
    """Bytes all connections of the agent may hold queued to send, together."""
    log_ring_bytes: int = DEFAULT_RING_BYTES
    """Bytes of log lines kept for replay to a new monitor (besides the line count)."""
    gossip_max_members: int = DEFAULT_MAX_MEMBERS
    """Members one gossip pool keeps at most; unknown nodes past it are ignored and counted."""
    start_join: tuple[str, ...] = ()
    """Gossip addresses the LAN pool joins at start; the agent does not start if none answers
    (Consul's ``-join``)."""
    start_join_wan: tuple[str, ...] = ()
    """The same for the WAN pool of a server (``-join-wan``)."""
    retry_join: tuple[str, ...] = ()
    """Gossip addresses the LAN pool joins after start, retrying every ``retry_interval``
    until one answers or ``retry_max`` attempts failed (``-retry-join``)."""
    retry_join_wan: tuple[str, ...] = ()
    retry_interval: float = DEFAULT_RETRY_INTERVAL
    retry_interval_wan: float = DEFAULT_RETRY_INTERVAL
    retry_max: int = 0
    """Failed ``retry_join`` attempts after which the agent exits with an error (0: never)."""
    retry_max_wan: int = 0
    leave_on_terminate: bool | None = None
    """Leave the cluster gracefully on SIGTERM; unset: as Consul, yes on a client, no on a
    server (see :func:`leaves_on_terminate`)."""
    skip_leave_on_interrupt: bool | None = None
    """Shut down on SIGINT without the graceful leave; unset: as Consul, yes on a server (it
    stays in the cluster), no on a client (see :func:`skips_leave_on_interrupt`)."""
    data_dir: str = ""
    """Where the agent keeps its state: the pools' keyring files (Consul's
    ``serf/local.keyring`` and ``serf/remote.keyring``); "" for none (nothing persisted)."""
    disable_coordinates: bool = False
    """Leave serf's network coordinates off (no coordinate in acks, none learned), as
    Consul's ``disable_coordinates``."""
    coordinate_update_period: float = 5.0
    """Seconds a server queues the coordinate updates it receives before it applies them
    through Raft (Consul's ``CoordinateUpdatePeriod``, not a config key there; tests shorten
    it)."""
    sync_coordinate_interval_min: float = 15.0
    """The shortest interval, in seconds, between two coordinate updates an agent sends
    (Consul's ``SyncCoordinateIntervalMin``; larger clusters space them out to 64 updates a
    second in all)."""
    serf_rpc_addr: str = ""
    """Where Serf's own agent RPC dialect listens (the ``serf`` CLI and Serf's clients drive
    the LAN pool through it); "" (the default) for no such listener. Serf's own default
    address is ``127.0.0.1:7373``."""
    serf_rpc_auth: str = ""
    """Serf's ``-rpc-auth``: when set, a Serf-dialect client must send ``auth`` with this key
    before any other command."""
    dns_addr: str = defaults.DEFAULT_DNS_ADDR
    """Where the agent answers Consul's DNS interface over UDP and TCP (from the catalog: a
    server in-process, a client agent through its servers): ``127.0.0.1:8600`` by default, as
    Consul's (``defaults.DEFAULT_DNS_ADDR``); "" for none (Consul's ``ports.dns = -1``)."""
    domain: str = "consul."
    """The DNS domain the interface answers for (Consul's ``domain``)."""
    dns_config: dict[str, Any] = field(default_factory=dict)
    """Consul's ``dns_config`` object, as a config file holds it: ``node_ttl``,
    ``service_ttl`` (service name or ``"*"`` to a duration), ``allow_stale``, ``max_stale``,
    ``only_passing``, ``enable_truncate``, ``udp_answer_limit`` (and ``recursor_timeout``,
    ``disable_compression``, accepted with no effect); empty for the reference's defaults."""
    node_id: str = ""
    """This agent's node ID, a UUID (Consul 0.8's ``node_id``); "" to use the one kept in
    ``data_dir/node-id``, created on first start (a fresh one each start without a data
    directory)."""
    node_meta: dict[str, Any] = field(default_factory=dict)
    """Metadata of this agent's node in the catalog (Consul 0.8's ``node_meta``: at most 64
    pairs of text, keys of ``[a-zA-Z0-9_-]``, none under ``consul-``)."""
    translate_wan_addrs: bool = False
    """DNS answers for a node of another datacenter give its ``wan`` tagged address when it
    has one (Consul's ``translate_wan_addrs``; ``dns_config.translate_wan_addrs`` too)."""
    http_addr: str = defaults.DEFAULT_HTTP_ADDR
    """Where the agent serves Consul's HTTP API (kv, catalog, agent, session, event, ...):
    ``127.0.0.1:8500`` by default, as Consul's (``defaults.DEFAULT_HTTP_ADDR``); "" for none
    (Consul's ``ports.http = -1``)."""
    bootstrap_expect: int = 1
    """Servers of the datacenter to wait for before bootstrapping a new Raft cluster: 1 (the
    default, Consul's ``-bootstrap``) makes a lone server elect itself; 3 or 5 for a real
    cluster (every server with the same value); 0 never bootstraps (the server waits for a
    leader to add it)."""
    raft_multiplier: int = CONSUL_DEFAULT_RAFT_MULTIPLIER
    """Consul's ``raft_multiplier``: Raft's heartbeat, election and lease timeouts scaled by
    1..10 (Consul's default 5; 1 for the fastest failover on good networks)."""
    raft_snapshot_threshold: int = 8192
    """Log entries since the last snapshot that trigger a new one (hashicorp/raft's default)."""
    raft_snapshot_interval: float = 120.0
    """Seconds between two checks of the snapshot threshold (hashicorp/raft's default)."""
    raft_trailing_logs: int = 10240
    """Log entries kept after a snapshot, for followers that lag (hashicorp/raft's default)."""
    autopilot_cleanup_dead_servers: bool = True
    """The leader removes servers that stay failed in serf from the Raft configuration, a
    minority at a time (Consul's autopilot ``cleanup_dead_servers``)."""
    dev: bool = False
    """Keep everything in memory (Consul's ``-dev``): no data directory, nothing persisted."""
    services: tuple[ConfigDefinition, ...] = ()
    """Service definitions of the config files: a file's ``services`` (a list), then its
    ``service`` (one object), each file adding to the ones before (Consul's ``Services``).
    Registered in the local state at start and replaced on reload."""
    checks: tuple[ConfigDefinition, ...] = ()
    """Check definitions, the same way from ``checks`` and ``check`` (Consul's ``Checks``)."""
    config_files: tuple[str, ...] = ()


RELOAD_AT_ONCE: Final = frozenset(
    {
        "log_level",
        "rpc_token",
        "agent_send_bytes",
        "log_ring_bytes",
        "gossip_max_members",
        "leave_on_terminate",
        "skip_leave_on_interrupt",
        "services",
        "checks",
    }
)
"""Settings a reload applies at once, to live connections too: the log level and ring, the
RPC token (checked on every request), the agent-wide byte budget, the gossip member bound,
what SIGTERM and SIGINT do (read when the signal comes), and the config files' services and
checks (the local state's are replaced by the new ones)."""

RELOAD_NEW_CONNECTIONS: Final = frozenset(
    {
        "rpc_max_conns_per_client",
        "max_frame_size",
        "handshake_timeout",
        "idle_timeout",
        "max_connections",
        "max_connections_per_client",
        "max_inflight",
        "monitor_queue_size",
        "send_queue_size",
        "drain_timeout",
        "send_queue_bytes",
        "rpc_spin_us",
    }
)
"""Settings a reload applies to what starts after it: the connection caps to the next
connection admitted; the per-connection limits (frame size, timeouts, queues, in-flight cap,
drain time, byte budget) to agent RPC connections and server-port streams opened after it,
while each live one keeps the limits it started with (the agent's own shutdown drains with
the newest ``drain_timeout``)."""

RELOADABLE: Final = RELOAD_AT_ONCE | RELOAD_NEW_CONNECTIONS
"""Settings a reload applies (at once, or to new connections); a change to any other setting
is reported as needing a restart and the old value is kept."""

_FIELDS: Final = {f.name: f for f in dataclasses.fields(AgentConfig) if f.name != "config_files"}
_ADDRESS_KEYS: Final = ("rpc_addr", "serf_lan_addr", "serf_wan_addr", "server_addr")
_OPTIONAL_ADDRESS_KEYS: Final = ("serf_rpc_addr", "dns_addr", "http_addr")
"""Addresses that may be "" (that listener is off)."""
_JOIN_KEYS: Final = ("start_join", "start_join_wan", "retry_join", "retry_join_wan")
_DEFINITION_KEYS: Final = {
    "services": ("services", True),
    "service": ("services", False),
    "checks": ("checks", True),
    "check": ("checks", False),
}
"""A file's key: the field its definitions go to, and whether it holds a list of them (else
one object). The lists come first in a file, as Consul's ``DecodeConfig`` reads them."""
_TYPES: Final = {
    "str": str,
    "bool": bool,
    "int": int,
    "float": float,
    "tuple[str, ...]": tuple,
    "bool | None": bool,
    "dict[str, Any]": dict,
}
"""A field's annotation (a string, with postponed annotations) and the type its value has."""

_DURATION_UNITS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([a-z\u00b5\u03bc]+)")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration (``"30s"``, ``"1m30s"``, ``"1.5h"``, ``"250ms"``, ``"0"``), as
    Consul's config files and flags spell them; ``ValueError`` for anything else."""
    body = text.strip()
    sign = 1.0
    if body[:1] in ("+", "-"):
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    if body == "0":
        return 0.0
    total = 0.0
    position = 0
    while position < len(body):
        match = _DURATION_PART.match(body, position)
        if match is None or match.group(2) not in _DURATION_UNITS:
            raise ValueError(f"invalid duration {text!r} (e.g. 30s, 1m30s, 250ms)")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position == 0:
        raise ValueError(f"invalid duration {text!r} (e.g. 30s, 1m30s, 250ms)")
    return sign * total


def _expected_type(name: str) -> type:
    return _TYPES[str(AgentConfig.__dataclass_fields__[name].type)]


def _check_value(name: str, value: Any, source: str) -> Any:
    if name not in _FIELDS:
        raise ConfigError(f"{source}: unknown key {name!r}")
    kind = _expected_type(name)
    if kind is float and type(value) is int:
        value = float(value)
    elif kind is float and type(value) is str:
        try:
            value = parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{source}: {name}: {exc}") from None
    elif kind is tuple and type(value) in (list, tuple):
        if not all(type(item) is str for item in value):
            raise ConfigError(f"{source}: {name} must be a list of strings, got {value!r}")
        value = tuple(value)
    if type(value) is not kind:
        described = "a list of strings" if kind is tuple else kind.__name__
        if kind is dict:
            described = "an object (a table) of settings"
        if kind is float:
            described = 'a number of seconds or a duration such as "30s"'
        raise ConfigError(f"{source}: {name} must be {described}, got {value!r}")
    return value


def _definitions(key: str, value: Any, source: str) -> tuple[ConfigDefinition, ...]:
    """The definitions under ``key`` (one of :data:`_DEFINITION_KEYS`), each an object."""
    _, is_list = _DEFINITION_KEYS[key]
    if not is_list:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be an object (one definition)")
        return (ConfigDefinition(f"{source}: {key}", value),)
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{source}: {key} must be a list of objects (definitions)")
    if len(value) > MAX_CONFIG_DEFINITIONS:
        raise ConfigError(
            f"{source}: {key} lists {len(value)} definitions; at most "
            f"{MAX_CONFIG_DEFINITIONS} services and checks in all"
        )
    found: list[ConfigDefinition] = []
    for position, item in enumerate(value):
        if isinstance(item, ConfigDefinition):
            found.append(item)
            continue
        if not isinstance(item, dict):
            raise ConfigError(f"{source}: {key}[{position}] must be an object (a definition)")
        found.append(ConfigDefinition(f"{source}: {key}[{position}]", item))
    return tuple(found)


def _read_settings(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Checked settings of one file (or the overrides): the definition keys gathered into
    ``services`` and ``checks``, the lists first."""
    settings: dict[str, Any] = {}
    ordered = sorted(data.items(), key=lambda item: item[0] in ("service", "check"))
    for key, value in ordered:
        if key in _DEFINITION_KEYS:
            target = _DEFINITION_KEYS[key][0]
            settings[target] = settings.get(target, ()) + _definitions(key, value, source)
        else:
            settings[key] = _check_value(key, value, source)
    return settings


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read one JSON or TOML file (by extension; anything else is tried as JSON).

    Files above :data:`MAX_CONFIG_FILE_SIZE` are refused before they are parsed (and never
    read past that size, even when the file grows while it is read).
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_FILE_SIZE + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_FILE_SIZE:
        raise ConfigError(
            f"config file {path} is larger than {MAX_CONFIG_FILE_SIZE // 1024} KiB; "
            "a configuration is a few kilobytes, so this is refused"
        )
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} does not parse: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold an object of settings")
    return _read_settings(data, str(path))


def validate(config: AgentConfig) -> AgentConfig:
    """Check what types alone cannot; returns the config unchanged or raises ConfigError."""
    if not config.node_name.strip():
        raise ConfigError("node_name must not be empty")
    if not config.datacenter.strip():
        raise ConfigError("datacenter must not be empty")
    try:
        parse_level(config.log_level)
    except ValueError as exc:
        raise ConfigError(f"log_level: {exc}") from None
    for key in _ADDRESS_KEYS:
        try:
            address = parse_address(getattr(config, key))
        except AddressError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        if key != "rpc_addr" and address.kind != "tcp":
            raise ConfigError(f"{key} must be HOST:PORT")
    for key in _OPTIONAL_ADDRESS_KEYS:
        text = getattr(config, key)
        if not text:
            continue
        try:
            parse_address(text)
        except AddressError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    if config.data_dir and not config.data_dir.strip():
        raise ConfigError("data_dir must not be blank (leave it unset for no data directory)")
    if not 64 <= config.max_frame_size <= 1 << 30:
        raise ConfigError("max_frame_size must be between 64 bytes and 1 GiB")
    for key in ("handshake_timeout", "drain_timeout"):
        if not 0 < getattr(config, key) <= 3600:
            raise ConfigError(f"{key} must be between 0 and 3600 seconds")
    for key in ("coordinate_update_period", "sync_coordinate_interval_min"):
        if not 0.001 <= getattr(config, key) <= 3600:
            raise ConfigError(f"{key} must be between 1ms and 3600 seconds")
    if not 0 <= config.rpc_spin_us <= 100_000:
        raise ConfigError("rpc_spin_us must be between 0 (no polling) and 100000 microseconds")
    if not 0 <= config.rpc_max_conns_per_client <= 1_000_000:
        raise ConfigError("rpc_max_conns_per_client must be between 0 (no limit) and 1000000")
    if not 0 < config.server_first_byte_timeout <= 3600:
        raise ConfigError("server_first_byte_timeout must be between 0 and 3600 seconds")
    try:
        tls_config(config)
    except TLSConfigError as exc:
        raise ConfigError(f"TLS: {exc}") from None
    if config.encrypt:
        try:
            parse_key(config.encrypt)
        except KeyringError as exc:
            raise ConfigError(f"encrypt: {exc}") from None
    for key in ("gossip_lan_profile", "gossip_wan_profile"):
        if getattr(config, key) not in PROFILES:
            raise ConfigError(f"{key} must be one of {', '.join(sorted(PROFILES))}")
    for key in ("reconnect_timeout", "tombstone_timeout"):
        if not 0 < getattr(config, key) <= 365 * 86400:
            raise ConfigError(f"{key} must be between 0 and a year, in seconds")
    if not 0 <= config.idle_timeout <= 86400:
        raise ConfigError("idle_timeout must be between 0 (never) and 86400 seconds")
    for key in (
        "monitor_queue_size",
        "send_queue_size",
        "max_connections",
        "max_connections_per_client",
        "max_inflight",
    ):
        if not 1 <= getattr(config, key) <= 1_000_000:
            raise ConfigError(f"{key} must be between 1 and 1000000")
    for key in ("send_queue_bytes", "agent_send_bytes", "log_ring_bytes"):
        if not 1024 <= getattr(config, key) <= 1 << 40:
            raise ConfigError(f"{key} must be between 1024 bytes and 1 TiB")
    if not 1 <= config.gossip_max_members <= 10_000_000:
        raise ConfigError("gossip_max_members must be between 1 and 10000000")
    for key in _JOIN_KEYS:
        addresses = getattr(config, key)
        if len(addresses) > MAX_JOIN_ADDRESSES:
            raise ConfigError(f"{key} lists more than {MAX_JOIN_ADDRESSES} addresses")
        if any(not address.strip() for address in addresses):
            raise ConfigError(f"{key} must not hold an empty address")
    if not config.server and (config.start_join_wan or config.retry_join_wan):
        raise ConfigError(
            "start_join_wan and retry_join_wan need server mode (a client has no WAN pool)"
        )
    for key in ("retry_interval", "retry_interval_wan"):
        if not 0 < getattr(config, key) <= 86400:
            raise ConfigError(f"{key} must be between 0 and 86400 seconds")
    for key in ("retry_max", "retry_max_wan"):
        if not 0 <= getattr(config, key) <= 1_000_000:
            raise ConfigError(f"{key} must be between 0 (retry for ever) and 1000000")
    if not 0 <= config.bootstrap_expect <= 1000:
        raise ConfigError("bootstrap_expect must be between 0 (never bootstrap) and 1000")
    if config.bootstrap_expect > 1 and not config.server:
        raise ConfigError("bootstrap_expect needs server mode")
    if not 1 <= config.raft_multiplier <= CONSUL_MAX_RAFT_MULTIPLIER:
        raise ConfigError(
            f"raft_multiplier cannot be {config.raft_multiplier}; must be between 1 and "
            f"{CONSUL_MAX_RAFT_MULTIPLIER}"
        )
    if not 1 <= config.raft_snapshot_threshold <= 1 << 32:
        raise ConfigError("raft_snapshot_threshold must be between 1 and 4294967296")
    if not 0.005 <= config.raft_snapshot_interval <= 86400:
        raise ConfigError("raft_snapshot_interval must be between 5ms and 86400 seconds")
    if not 0 <= config.raft_trailing_logs <= 1 << 32:
        raise ConfigError("raft_trailing_logs must be between 0 and 4294967296")
    if config.node_id:
        try:
            uuid.UUID(config.node_id)
        except ValueError:
            raise ConfigError(f"node_id: {config.node_id!r} is not a UUID") from None
    if any(not isinstance(value, str) for value in config.node_meta.values()):
        raise ConfigError("node_meta: every value must be a string")
    if config.dev and config.data_dir:
        raise ConfigError("dev keeps everything in memory: it cannot have a data_dir")
    for key in ("services", "checks"):
        if not all(isinstance(item, ConfigDefinition) for item in getattr(config, key)):
            raise ConfigError(f"{key} must hold definitions read from config files")
    if len(config.services) + len(config.checks) > MAX_CONFIG_DEFINITIONS:
        raise ConfigError(
            f"the config files define {len(config.services)} services and "
            f"{len(config.checks)} checks; at most {MAX_CONFIG_DEFINITIONS} in all"
        )
    return config


def default_data_dir(config: AgentConfig, environ: Mapping[str, str]) -> str:
    """Where ``agentrpc serve`` keeps a node's state when neither ``data_dir`` nor ``dev``
    is set: ``$XDG_DATA_HOME/agentrpc/<datacenter>/<node_name>`` (``~/.local/share`` when
    ``XDG_DATA_HOME`` is unset or not absolute, as the XDG spec says). Pure: the caller passes
    the environment."""
    base = environ.get("XDG_DATA_HOME", "")
    if not base or not Path(base).is_absolute():
        home = environ.get("HOME") or str(Path.home())
        base = str(Path(home) / ".local" / "share")
    return str(
        Path(base) / "agentrpc" / _path_part(config.datacenter) / _path_part(config.node_name)
    )


def _path_part(name: str) -> str:
    """A name as one safe path component (no separators, no dot-only names)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"
    return "_" + cleaned if cleaned.strip(".") == "" else cleaned


def leaves_on_terminate(config: AgentConfig) -> bool:
    """Whether SIGTERM leaves the cluster gracefully: ``leave_on_terminate``, by default as
    Consul decides (since 0.7): a client leaves, a server does not."""
    if config.leave_on_terminate is None:
        return not config.server
    return config.leave_on_terminate


def skips_leave_on_interrupt(config: AgentConfig) -> bool:
    """Whether SIGINT shuts down without the graceful leave: ``skip_leave_on_interrupt``, by
    default as Consul 0.7 decides: a server skips it (it stays in the cluster, and a quorum
    keeps its member), a client leaves."""
    if config.skip_leave_on_interrupt is None:
        return config.server
    return config.skip_leave_on_interrupt


def tls_config(config: AgentConfig) -> TLSConfig | None:
    """The server port's TLS settings, or None when no TLS file is configured."""
    if not (config.ca_file or config.cert_file or config.key_file):
        if config.verify_incoming or config.verify_outgoing:
            raise TLSConfigError("verify_incoming/verify_outgoing need ca_file (and a cert)")
        return None
    return TLSConfig(
        ca_file=config.ca_file or None,
        cert_file=config.cert_file or None,
        key_file=config.key_file or None,
        verify_incoming=config.verify_incoming,
        verify_outgoing=config.verify_outgoing,
    )


def load_config(
    files: Sequence[str | Path] = (), overrides: Mapping[str, Any] | None = None
) -> AgentConfig:
    """Defaults, then each file in order, then ``overrides`` (None values are ignored); a
    later setting replaces an earlier one, except the services and checks, which add up."""
    settings: dict[str, Any] = {}
    layers = [read_config_file(path) for path in files]
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    layers.append(_read_settings(given, "command line"))
    for layer in layers:
        for key, value in layer.items():
            if key in ("services", "checks"):
                value = settings.get(key, ()) + value  # definitions add up, file after file
            settings[key] = value
    settings["config_files"] = tuple(str(path) for path in files)
    return validate(AgentConfig(**settings))


def changed_settings(old: AgentConfig, new: AgentConfig) -> list[str]:
    """Names of the settings that differ between two configs."""
    return [name for name in _FIELDS if getattr(old, name) != getattr(new, name)]
