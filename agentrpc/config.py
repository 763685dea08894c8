"""The agent's configuration: defaults, JSON/TOML files, command-line overrides, validation.

Precedence, lowest first: built-in defaults, each ``--config-file`` in the order given, then the
flags given on the command line. :func:`load_config` is pure apart from reading the files, so
``reload`` can build a new config, validate it, and keep the old one when the new one is bad.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import tomllib
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
from .serverport.tls import TLSConfig, TLSConfigError
from .transports import AddressError, parse_address

MAX_CONFIG_FILE_SIZE: Final = 1 << 20
"""Config files larger than this (1 MiB) are refused, at start and on reload."""


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the key."""


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
    config_files: tuple[str, ...] = ()


RELOAD_AT_ONCE: Final = frozenset(
    {
        "log_level",
        "rpc_token",
        "agent_send_bytes",
        "log_ring_bytes",
        "gossip_max_members",
    }
)
"""Settings a reload applies at once, to live connections too: the log level and ring, the
RPC token (checked on every request), the agent-wide byte budget, the gossip member bound."""

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


def _expected_type(name: str) -> type:
    default = AgentConfig.__dataclass_fields__[name].type
    return {"str": str, "bool": bool, "int": int, "float": float}[str(default)]


def _check_value(name: str, value: Any, source: str) -> Any:
    if name not in _FIELDS:
        raise ConfigError(f"{source}: unknown key {name!r}")
    kind = _expected_type(name)
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind:
        raise ConfigError(f"{source}: {name} must be {kind.__name__}, got {value!r}")
    return value


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
    return {key: _check_value(key, value, str(path)) for key, value in data.items()}


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
    if not 64 <= config.max_frame_size <= 1 << 30:
        raise ConfigError("max_frame_size must be between 64 bytes and 1 GiB")
    for key in ("handshake_timeout", "drain_timeout"):
        if not 0 < getattr(config, key) <= 3600:
            raise ConfigError(f"{key} must be between 0 and 3600 seconds")
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
    return config


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
    """Defaults, then each file in order, then ``overrides`` (None values are ignored)."""
    settings: dict[str, Any] = {}
    for path in files:
        settings.update(read_config_file(path))
    for key, value in (overrides or {}).items():
        if value is not None:
            settings[key] = _check_value(key, value, "command line")
    settings["config_files"] = tuple(str(path) for path in files)
    return validate(AgentConfig(**settings))


def changed_settings(old: AgentConfig, new: AgentConfig) -> list[str]:
    """Names of the settings that differ between two configs."""
    return [name for name in _FIELDS if getattr(old, name) != getattr(new, name)]
