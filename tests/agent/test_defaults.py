"""Defaults have one home: the config, the engines' limits and the CLI read the same names."""

from __future__ import annotations

import dataclasses

from agentrpc import defaults
from agentrpc.config import RELOAD_AT_ONCE, RELOAD_NEW_CONNECTIONS, RELOADABLE, AgentConfig
from agentrpc.protocol.constants import DEFAULT_RPC_PORT
from agentrpc.rpc_connection import EngineLimits
from agentrpc.serverport.router import RouterLimits
from agentrpc.serverport.rpc_codec import DEFAULT_SERVER_PORT

_CONFIG_FIELDS = {field.name: field for field in dataclasses.fields(AgentConfig)}


def _default(name: str) -> object:
    return _CONFIG_FIELDS[name].default


def test_the_config_defaults_are_the_named_ones() -> None:
    assert _default("rpc_addr") == defaults.DEFAULT_RPC_ADDR == f"127.0.0.1:{DEFAULT_RPC_PORT}"
    assert _default("server_addr") == defaults.DEFAULT_SERVER_ADDR
    assert _default("serf_lan_addr") == defaults.DEFAULT_SERF_LAN_ADDR
    assert _default("serf_wan_addr") == defaults.DEFAULT_SERF_WAN_ADDR
    assert defaults.SERVER_PORT == DEFAULT_SERVER_PORT
    # Consul's HTTP API and DNS interface are on by default, on Consul's loopback ports.
    assert _default("http_addr") == defaults.DEFAULT_HTTP_ADDR == "127.0.0.1:8500"
    assert _default("dns_addr") == defaults.DEFAULT_DNS_ADDR == "127.0.0.1:8600"


def test_engine_and_router_limits_agree_with_the_config() -> None:
    engine = EngineLimits()
    assert engine.handshake_timeout == _default("handshake_timeout")
    assert engine.idle_timeout == _default("idle_timeout")
    assert engine.send_queue == _default("send_queue_size")
    assert engine.max_inflight == _default("max_inflight")
    assert engine.monitor_queue == _default("monitor_queue_size")
    assert engine.drain_timeout == _default("drain_timeout")
    assert engine.max_frame_size == _default("max_frame_size")
    assert engine.send_queue_bytes == _default("send_queue_bytes")
    router = RouterLimits()
    assert router.first_byte_timeout == _default("server_first_byte_timeout")
    assert router.max_conns_per_client == _default("rpc_max_conns_per_client")
    assert router.max_object_size == _default("max_frame_size")
    assert router.send_queue_bytes == _default("send_queue_bytes")


def test_the_cli_dials_the_default_rpc_address() -> None:
    from agentrpc.cli import main

    assert main.DEFAULT_RPC_ADDR == defaults.DEFAULT_RPC_ADDR


def test_reloadable_is_split_by_when_a_setting_applies() -> None:
    assert not RELOAD_AT_ONCE & RELOAD_NEW_CONNECTIONS
    assert RELOAD_AT_ONCE | RELOAD_NEW_CONNECTIONS == RELOADABLE
    assert set(_CONFIG_FIELDS) >= RELOADABLE
