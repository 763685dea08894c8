"""Configuration: defaults, files (JSON and TOML), precedence, validation, reload rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrpc.config import AgentConfig, ConfigError, changed_settings, load_config


def test_defaults_are_safe_loopback() -> None:
    config = load_config(overrides={"node_name": "n"})
    assert config.rpc_addr == "127.0.0.1:8400"
    assert config.serf_lan_addr == "127.0.0.1:8301"
    assert config.serf_wan_addr == "127.0.0.1:8302"
    assert config.server_addr == "127.0.0.1:8300"
    assert config.datacenter == "dc1"
    assert config.server is True
    assert config.max_frame_size == 1 << 20


def test_files_in_order_then_command_line(tmp_path: Path) -> None:
    first = tmp_path / "a.json"
    first.write_text(json.dumps({"datacenter": "east", "log_level": "DEBUG", "server": False}))
    second = tmp_path / "b.toml"
    second.write_text('datacenter = "west"\nhandshake_timeout = 3\n')
    config = load_config([first, second], {"log_level": "WARN", "node_name": "cli"})
    assert config.datacenter == "west"
    assert config.server is False
    assert config.log_level == "WARN"
    assert config.handshake_timeout == 3.0
    assert config.node_name == "cli"
    assert config.config_files == (str(first), str(second))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"colour": 1}', "unknown key 'colour'"),
        ('{"server": "yes"}', "server must be bool"),
        ('{"max_frame_size": 10}', "max_frame_size must be between"),
        ('{"rpc_addr": "nowhere"}', "rpc_addr: address 'nowhere' needs a port"),
        ('{"serf_lan_addr": "unix:///x"}', "serf_lan_addr must be HOST:PORT"),
        ('{"log_level": "LOUD"}', "unknown log level"),
        ('{"node_name": "  "}', "node_name must not be empty"),
        ("[1, 2]", "must hold an object"),
        ("{", "does not parse"),
    ],
)
def test_invalid_files_are_refused_with_a_clear_message(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config([path])


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config([tmp_path / "missing.json"])


def test_unix_rpc_address_is_allowed() -> None:
    assert (
        load_config(overrides={"rpc_addr": "unix:///tmp/a.sock"}).rpc_addr == "unix:///tmp/a.sock"
    )


def test_changed_settings() -> None:
    old = AgentConfig(node_name="a")
    new = AgentConfig(node_name="b", log_level="DEBUG")
    assert changed_settings(old, new) == ["node_name", "log_level"]


def test_raft_settings_default_to_consuls_and_are_checked() -> None:
    config = load_config(overrides={"node_name": "n"})
    assert (config.bootstrap_expect, config.raft_multiplier) == (1, 5)
    assert config.autopilot_cleanup_dead_servers and not config.dev
    for bad, text in (
        ({"raft_multiplier": 0}, "raft_multiplier cannot be 0"),
        ({"raft_multiplier": 11}, "must be between 1 and 10"),
        ({"bootstrap_expect": -1}, "bootstrap_expect"),
        ({"bootstrap_expect": 3, "server": False}, "bootstrap_expect needs server mode"),
        ({"dev": True, "data_dir": "/tmp/x"}, "dev keeps everything in memory"),
        ({"raft_snapshot_interval": "1ms"}, "raft_snapshot_interval"),
    ):
        with pytest.raises(ConfigError, match=text):
            load_config(overrides={"node_name": "n", **bad})
    assert load_config(overrides={"raft_snapshot_interval": "30s"}).raft_snapshot_interval == 30


def test_the_default_data_dir_is_per_node_under_the_users_data_directory() -> None:
    from agentrpc.config import default_data_dir

    config = load_config(overrides={"node_name": "web/1", "datacenter": "east"})
    assert default_data_dir(config, {"XDG_DATA_HOME": "/data"}) == "/data/agentrpc/east/web_1"
    assert default_data_dir(config, {"HOME": "/home/u"}) == (
        "/home/u/.local/share/agentrpc/east/web_1"
    )
    # A relative XDG_DATA_HOME is ignored, as the XDG spec says; ".." cannot climb out.
    dotted = load_config(overrides={"node_name": ".."})
    assert default_data_dir(dotted, {"XDG_DATA_HOME": "rel", "HOME": "/h"}) == (
        "/h/.local/share/agentrpc/dc1/_.."
    )
