"""No silent fallbacks at start: a serf host DNS cannot resolve stops the agent with an error
that names it (it is never advertised as 127.0.0.1)."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

from agentrpc.agent import Agent, AgentStartError
from agentrpc.cli.main import app
from agentrpc.config import load_config
from agentrpc.membership import HostResolutionError, resolve_ip


def _no_dns(host: str) -> str:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def test_resolve_ip_names_the_host_it_cannot_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    assert str(resolve_ip("10.1.2.3")) == "10.1.2.3"
    assert str(resolve_ip("::1")) == "::1"
    monkeypatch.setattr(socket, "gethostbyname", _no_dns)
    with pytest.raises(HostResolutionError, match=r"cannot resolve host 'gossip\.example'"):
        resolve_ip("gossip.example")


@pytest.mark.parametrize("key", ["serf_lan_addr", "serf_wan_addr"])
def test_an_unresolvable_serf_host_is_a_start_error(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    monkeypatch.setattr(socket, "gethostbyname", _no_dns)
    config = load_config(overrides={"node_name": "n1", key: "gossip.example:8301"})
    with pytest.raises(AgentStartError) as caught:
        Agent(config)
    message = str(caught.value)
    assert "gossip.example" in message
    assert ("LAN" if key == "serf_lan_addr" else "WAN") in message
    assert "127.0.0.1" not in message


def test_the_cli_reports_it_without_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostbyname", _no_dns)
    result = CliRunner().invoke(
        app,
        [
            "serve", "--node", "n1", "--serf-lan-addr", "gossip.example:8301",
            "--http-addr", "", "--dns-addr", "",
        ],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "Error starting agent" in result.output
    assert "cannot resolve host 'gossip.example'" in result.output
    assert "Traceback" not in result.output
