"""The ``service``/``services`` and ``check``/``checks`` sections of config files: how they are
read (single and list forms, files adding up, refusals naming the file, key and reason, the
count bound), how the local state takes them at start and on reload (removed, changed and
unchanged definitions; HTTP registrations kept), and a real agent on loopback whose
config-file service reaches the catalog and health endpoints by anti-entropy and changes with
a reload while an HTTP-registered service survives."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import consul
import pytest
import trio
from rpc_helpers import running_agent

from agentrpc.agent import Agent, AgentStartError
from agentrpc.catalog.constants import HEALTH_CRITICAL, HEALTH_PASSING
from agentrpc.config import (
    MAX_CONFIG_DEFINITIONS,
    RELOAD_AT_ONCE,
    RELOADABLE,
    ConfigError,
    changed_settings,
    load_config,
)
from agentrpc.gossip.transport import MemoryGossipNetwork
from agentrpc.local_state.agent_state import MAX_CHECKS, LocalAgent, LocalAgentError
from agentrpc.local_state.definitions import parse_service
from agentrpc.local_state.from_config import ConfigDefinitions, config_definitions
from agentrpc.local_state.state import LocalState

T = TypeVar("T")

TTL_WEB = {"name": "web", "port": 80, "tags": ["v1"], "check": {"ttl": "30s"}}


def write(path: Path, settings: dict[str, Any]) -> Path:
    path.write_text(json.dumps(settings))
    return path


def loaded(*files: Path, **overrides: Any) -> ConfigDefinitions:
    return config_definitions(load_config(files, {"node_name": "n", **overrides}))


# ---------------------------------------------------------------------- reading


def test_single_and_list_forms_of_one_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.json",
        {
            "service": {"name": "solo", "port": 1},
            "services": [
                {"name": "web", "id": "web-1", "tags": ["v1"], "check": {"ttl": "10s"}},
                {
                    "Name": "api",
                    "checks": [
                        {"http": "http://127.0.0.1:1/", "interval": "10s"},
                        {"tcp": "127.0.0.1:1", "interval": "5s", "name": "port"},
                    ],
                },
            ],
            "check": {"name": "mem", "ttl": "1m", "token": "t1"},
            "checks": [{"id": "disk", "name": "Disk", "ttl": "30s", "service_id": "web-1"}],
        },
    )
    config = load_config([path], {"node_name": "n"})
    # The lists first, then the single object, as Consul reads a file.
    assert [d.source for d in config.services] == [
        f"{path}: services[0]",
        f"{path}: services[1]",
        f"{path}: service",
    ]
    assert [d.source for d in config.checks] == [f"{path}: checks[0]", f"{path}: check"]
    found = config_definitions(config)
    assert [s.service.id for s in found.services] == ["web-1", "api", "solo"]
    web, api, _ = found.services
    assert web.service.service == "web" and web.service.tags == ("v1",)
    assert [(c.check_id, c.name, c.ttl_ns) for c in web.checks] == [
        ("service:web-1", "Service 'web' check", 10 * 10**9)
    ]
    assert [c.check_id for c in api.checks] == ["service:api:1", "service:api:2"]
    assert api.checks[1].name == "port" and api.checks[1].tcp == "127.0.0.1:1"
    disk, mem = found.checks
    assert (disk.definition.check_id, disk.definition.service_id) == ("disk", "web-1")
    assert (mem.definition.check_id, mem.definition.ttl_ns, mem.token) == ("mem", 60 * 10**9, "t1")
    assert found.count == 3 + 3 + 2


def test_toml_tables_and_arrays_of_tables(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text(
        '[[services]]\nname = "web"\nport = 80\n[services.check]\nttl = "15s"\n\n'
        '[[checks]]\nname = "mem"\nttl = "1m"\n'
    )
    found = loaded(path)
    assert [s.service.service for s in found.services] == ["web"]
    assert found.services[0].checks[0].ttl_ns == 15 * 10**9
    assert [c.definition.name for c in found.checks] == ["mem"]


def test_several_files_add_up(tmp_path: Path) -> None:
    first = write(
        tmp_path / "a.json", {"service": {"name": "a"}, "check": {"name": "x", "ttl": "1s"}}
    )
    second = write(tmp_path / "b.json", {"services": [{"name": "b"}, {"name": "c"}]})
    third = write(tmp_path / "c.json", {"checks": [{"name": "y", "ttl": "1s"}]})
    found = loaded(first, second, third)
    assert [s.service.id for s in found.services] == ["a", "b", "c"]
    assert [c.definition.check_id for c in found.checks] == ["x", "y"]
    # A file without the keys keeps the definitions of the others.
    plain = write(tmp_path / "d.json", {"log_level": "DEBUG"})
    assert [s.service.id for s in loaded(first, plain).services] == ["a"]


@pytest.mark.parametrize(
    ("settings", "where", "reason"),
    [
        ({"services": [{"name": "ok"}, {"port": 80}]}, "services[1]", "Missing service name"),
        ({"service": {"name": "w", "port": "80"}}, "service", "'Port' expected type 'int'"),
        (
            {"service": {"name": "w", "check": {"interval": "10s"}}},
            "service",
            "Must provide TTL or Script/DockerContainerID/HTTP/TCP and Interval",
        ),
        (
            {"service": {"name": "w", "check": {"ttl": "10s", "status": "fine"}}},
            "service",
            "Status for checks must",
        ),
        ({"checks": [{"ttl": "10s"}]}, "checks[0]", "Missing check name"),
        ({"check": {"name": "c", "ttl": "ten"}}, "check", "Request decode failed"),
        ({"check": {"name": "c", "ttl": "1s", "status": "up"}}, "check", "Bad check status"),
        (
            {"check": {"name": "c", "script": "/bin/true", "interval": "10s"}},
            "check",
            "Scripts are disabled on this agent",
        ),
        (
            {"service": {"name": "w", "check": {"script": "/bin/true", "interval": "1s"}}},
            "service",
            "Scripts are disabled on this agent",
        ),
        (
            {"check": {"name": "c", "ttl": "1s", "service_id": "nope"}},
            "check",
            'ServiceID "nope" does not exist',
        ),
        ({"service": {"name": "consul"}}, "service", "reserved"),
        ({"check": {"name": "c", "ttl": "1s", "token": 5}}, "check", "'Token' expected"),
    ],
)
def test_a_refused_definition_names_the_file_the_key_and_the_reason(
    tmp_path: Path, settings: dict[str, Any], where: str, reason: str
) -> None:
    path = write(tmp_path / "bad.json", settings)
    config = load_config([path], {"node_name": "n"})
    with pytest.raises(ConfigError) as info:
        config_definitions(config)
    assert str(info.value).startswith(f"{path}: {where}: ")
    assert reason in str(info.value)
    # The agent does not start with it, and says the same.
    with pytest.raises(AgentStartError, match=r"bad\.json") as started:
        Agent(config)
    assert reason in str(started.value)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"service": [{"name": "a"}]}, "service must be an object"),
        ({"services": {"name": "a"}}, "services must be a list of objects"),
        ({"checks": [{"name": "a", "ttl": "1s"}, "mem"]}, "checks[1] must be an object"),
        ({"check": "mem"}, "check must be an object"),
    ],
)
def test_a_definition_of_the_wrong_shape_is_refused_when_read(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    path = write(tmp_path / "bad.json", settings)
    with pytest.raises(ConfigError, match=str(path)) as info:
        load_config([path], {"node_name": "n"})
    assert message in str(info.value)


def test_the_count_of_definitions_is_bounded(tmp_path: Path) -> None:
    services = [{"name": f"s{i}"} for i in range(MAX_CONFIG_DEFINITIONS + 1)]
    one = write(tmp_path / "one.json", {"services": services})
    with pytest.raises(ConfigError, match=f"at most {MAX_CONFIG_DEFINITIONS}"):
        load_config([one], {"node_name": "n"})
    # Files add up to the bound too.
    half = MAX_CONFIG_DEFINITIONS // 2 + 1
    a = write(tmp_path / "a.json", {"services": [{"name": f"a{i}"} for i in range(half)]})
    b = write(
        tmp_path / "b.json", {"checks": [{"name": f"b{i}", "ttl": "1s"} for i in range(half)]}
    )
    with pytest.raises(ConfigError, match=f"at most {MAX_CONFIG_DEFINITIONS} in all"):
        load_config([a, b], {"node_name": "n"})
    # And a service's own checks count.
    checks = [{"ttl": "1s"} for _ in range(MAX_CONFIG_DEFINITIONS)]
    many = write(tmp_path / "many.json", {"service": {"name": "w", "checks": checks}})
    with pytest.raises(ConfigError, match="own checks included"):
        loaded(many)
    # Just below the bound is fine.
    fits = write(tmp_path / "fits.json", {"services": services[:MAX_CONFIG_DEFINITIONS]})
    assert loaded(fits).count == MAX_CONFIG_DEFINITIONS
    assert MAX_CONFIG_DEFINITIONS < MAX_CHECKS  # room is left for HTTP registrations


def test_the_definitions_reload_without_a_restart(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", {"service": {"name": "a"}})
    old = load_config([path], {"node_name": "n"})
    write(path, {"service": {"name": "a", "port": 2}, "check": {"name": "c", "ttl": "1s"}})
    new = load_config([path], {"node_name": "n"})
    assert changed_settings(old, new) == ["services", "checks"]
    assert {"services", "checks"} <= RELOAD_AT_ONCE <= RELOADABLE
    assert changed_settings(new, load_config([path], {"node_name": "n"})) == []


# ---------------------------------------------------------------------- the local state


def local_agent(*, server: bool = False) -> LocalAgent:
    async def call(method: str, args: Any) -> Any:
        raise AssertionError("no RPC in these tests")

    return LocalAgent(
        LocalState("n", datacenter="dc1"),
        call,
        consul_service_port=8300 if server else None,
        clock=lambda: 0.0,
    )


def defs(tmp_path: Path, settings: dict[str, Any]) -> ConfigDefinitions:
    return loaded(write(tmp_path / "defs.json", settings))


def test_loading_replaces_the_configs_own_and_keeps_the_apis(tmp_path: Path) -> None:
    local = local_agent(server=True)
    first = defs(
        tmp_path,
        {
            "services": [TTL_WEB, {"name": "cache", "check": {"ttl": "30s"}}, {"name": "old"}],
            "checks": [{"name": "mem", "ttl": "1m"}, {"name": "gone", "ttl": "1m"}],
        },
    )
    local.load_config(first)
    state = local.state
    assert set(state.services) == {"consul", "web", "cache", "old"}
    assert set(state.checks) == {"service:web", "service:cache", "mem", "gone"}
    assert state.checks["service:web"].service_name == "web"
    # The API registers its own, and passes two config checks.
    local.add_service(parse_service({"Name": "api", "Check": {"TTL": "10s"}}))
    local.update_ttl("service:cache", HEALTH_PASSING, "warm")
    local.update_ttl("mem", HEALTH_PASSING, "plenty")
    second = defs(
        tmp_path,
        {
            "services": [
                {**TTL_WEB, "tags": ["v2"]},  # changed
                {"name": "cache", "check": {"ttl": "30s"}},  # unchanged
                {"name": "db", "port": 5432},  # new
            ],
            "checks": [{"name": "mem", "ttl": "1m"}],  # unchanged; "gone" removed
        },
    )
    local.load_config(second)
    assert set(state.services) == {"consul", "web", "cache", "db", "api"}
    assert state.services["web"].tags == ("v2",)
    assert set(state.checks) == {"service:web", "service:cache", "mem", "service:api"}
    # The unchanged ones keep their status and output; the API's are untouched.
    assert (state.checks["service:cache"].status, state.checks["service:cache"].output) == (
        HEALTH_PASSING,
        "warm",
    )
    assert state.checks["mem"].status == HEALTH_PASSING
    assert state.checks["service:api"].status == HEALTH_CRITICAL
    assert local.config_services == {"web", "cache", "db"}
    assert local.config_checks == {"service:web", "service:cache", "mem"}
    # A changed check starts again (critical, the reference's initial status).
    third = defs(tmp_path, {"check": {"name": "mem", "ttl": "2m"}})
    local.load_config(third)
    assert set(state.services) == {"consul", "api"}
    assert set(state.checks) == {"mem", "service:api"}
    assert state.checks["mem"].status == HEALTH_CRITICAL
    assert local.definitions["mem"].ttl_ns == 120 * 10**9
    assert "service:cache" not in local.definitions
    # Loading nothing removes every config definition, and only those.
    local.load_config(ConfigDefinitions())
    assert set(state.services) == {"consul", "api"} and set(state.checks) == {"service:api"}


def test_an_api_registration_of_a_config_id_takes_it_over(tmp_path: Path) -> None:
    local = local_agent()
    local.load_config(defs(tmp_path, {"services": [TTL_WEB, {"name": "db"}]}))
    local.add_service(parse_service({"Name": "web", "Port": 8080}))
    local.remove_service("db")
    assert local.config_services == set()
    # The API's web came without a check: the config's check stays the config's.
    assert local.config_checks == {"service:web"}
    # The config no longer has them: the API's web stays, the config's check goes.
    local.load_config(ConfigDefinitions())
    assert local.state.services["web"].port == 8080
    assert local.state.checks == {}
    # A config that has them again registers them again (the config's wins on reload).
    local.load_config(defs(tmp_path, {"services": [TTL_WEB, {"name": "db"}]}))
    assert local.state.services["web"].port == 80 and "db" in local.state.services


def test_a_load_that_does_not_fit_changes_nothing(tmp_path: Path) -> None:
    local = local_agent()
    local.load_config(defs(tmp_path, {"service": TTL_WEB}))
    for i in range(MAX_CHECKS - 2):
        local.add_service(parse_service({"Name": f"api{i}"}))
    before = (dict(local.state.services), dict(local.state.checks))
    with pytest.raises(LocalAgentError, match="more than"):
        local.load_config(defs(tmp_path, {"services": [TTL_WEB, {"name": "db"}]}))
    assert (dict(local.state.services), dict(local.state.checks)) == before
    assert local.config_services == {"web"}
    # A check on the servers' own service needs that service here.
    client = local_agent()
    with pytest.raises(LocalAgentError, match='ServiceID "consul" does not exist'):
        client.load_config(
            defs(tmp_path, {"check": {"name": "c", "ttl": "1s", "service_id": "consul"}})
        )
    assert client.state.checks == {}


# ---------------------------------------------------------------------- a real agent


async def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking py-consul call in a worker thread, while the agent serves on this loop."""
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


POLL_LIMIT = 40.0
"""Seconds a poll of the real agent may take (anti-entropy runs on real time, and a server's
first sync may wait for its election on two loaded cores)."""


async def until(probe: Callable[[], Any]) -> Any:
    """Poll the real agent until ``probe`` gives a truthy value, at most ``POLL_LIMIT``."""
    with trio.fail_after(POLL_LIMIT):
        while True:
            value = await probe()
            if value:
                return value
            await trio.sleep(0.05)


def pyconsul(agent: Agent) -> consul.Consul:
    assert agent.http_address is not None
    return consul.Consul(host=agent.http_address.host, port=agent.http_address.port)


async def test_config_services_reach_the_catalog_and_follow_a_reload(tmp_path: Path) -> None:
    path = write(
        tmp_path / "services.json",
        {
            "service": TTL_WEB,
            "services": [{"name": "cache", "port": 6379, "check": {"ttl": "5m"}}],
            "check": {"id": "disk", "name": "Disk", "ttl": "5m"},
        },
    )
    async with running_agent(
        "tcp",
        files=[str(path)],
        gossip_network=MemoryGossipNetwork(),
        node_name="cfg1",
        http_addr="127.0.0.1:0",
    ) as agent:
        c = pyconsul(agent)
        services = await blocking(c.agent.services)
        assert {"web", "cache"} <= services.keys()
        assert services["web"]["Port"] == 80 and services["web"]["Tags"] == ["v1"]
        checks = await blocking(c.agent.checks)
        assert {"service:web", "service:cache", "disk"} <= checks.keys()
        assert checks["service:web"]["ServiceName"] == "web"

        async def in_catalog(name: str) -> list[dict[str, Any]]:
            _, nodes = await blocking(c.catalog.service, name)
            return list(nodes)

        web = await until(lambda: in_catalog("web"))
        assert (web[0]["Node"], web[0]["ServicePort"], web[0]["ServiceTags"]) == (
            "cfg1",
            80,
            ["v1"],
        )
        # The TTL checks, passed over HTTP, show in the health endpoint (``?passing`` needs
        # the node's own checks passing too: disk).
        await blocking(c.agent.check.ttl_pass, "service:web", "fine")
        await blocking(c.agent.check.ttl_pass, "service:cache", "warm")
        await blocking(c.agent.check.ttl_pass, "disk", "roomy")

        async def healthy(name: str) -> list[dict[str, Any]]:
            _, entries = await blocking(c.health.service, name, passing=True)
            return list(entries)

        entry = (await until(lambda: healthy("web")))[0]
        assert entry["Service"]["ID"] == "web"
        assert [(k["CheckID"], k["Status"]) for k in entry["Checks"] if k["ServiceID"]] == [
            ("service:web", "passing")
        ]
        await until(lambda: healthy("cache"))
        # One registered over HTTP, which a reload keeps.
        await blocking(c.agent.service.register, "api", port=9000)
        await until(lambda: in_catalog("api"))

        write(
            path,
            {
                "services": [
                    {**TTL_WEB, "port": 8080, "tags": ["v2"]},
                    {"name": "cache", "port": 6379, "check": {"ttl": "5m"}},
                ],
                "service": {"name": "db", "port": 5432},
            },
        )
        assert await agent.reload() == ""
        services = await blocking(c.agent.services)
        assert {"web", "cache", "db", "api"} <= services.keys()
        assert services["web"]["Port"] == 8080 and services["web"]["Tags"] == ["v2"]
        checks = await blocking(c.agent.checks)
        assert "disk" not in checks
        assert checks["service:cache"]["Status"] == "passing"  # unchanged: kept its status
        # Only web's port and tags changed: its check, the same, keeps its status too.
        assert checks["service:web"]["Status"] == "passing"

        async def web_moved() -> bool:
            nodes = await in_catalog("web")
            return bool(nodes) and nodes[0]["ServicePort"] == 8080

        await until(web_moved)
        assert (await in_catalog("web"))[0]["ServiceTags"] == ["v2"]
        await until(lambda: in_catalog("db"))

        async def disk_gone() -> bool:
            _, node_checks = await blocking(c.health.node, "cfg1")
            return not any(k["CheckID"] == "disk" for k in node_checks)

        await until(disk_gone)
        assert await in_catalog("api")
        assert await healthy("cache")  # its passing status reached the catalog and stayed

        # A reload without web removes it everywhere; the HTTP one survives again.
        write(path, {"service": {"name": "db", "port": 5432}})
        assert await agent.reload() == ""
        services = await blocking(c.agent.services)
        assert "web" not in services and "cache" not in services
        assert {"db", "api"} <= services.keys()

        async def web_gone() -> bool:
            return not await in_catalog("web")

        await until(web_gone)
        assert await in_catalog("api") and await in_catalog("db")
        assert not await in_catalog("cache")


async def test_a_bad_reload_keeps_the_old_config_and_definitions(tmp_path: Path) -> None:
    path = write(tmp_path / "services.json", {"service": TTL_WEB})
    async with running_agent("memory", files=[str(path)], node_name="cfg2") as agent:
        assert agent.http_agent is not None
        local = agent.http_agent.local
        old = agent.config
        write(path, {"services": [{"name": "db"}, {"port": 1}], "log_level": "WARN"})
        error = await agent.reload()
        assert error.startswith("Failed to reload configs: ")
        assert f"{path}: services[1]: Missing service name" in error
        assert agent.config is old
        assert "web" in local.state.services and "db" not in local.state.services


async def test_config_services_without_the_http_api(tmp_path: Path) -> None:
    path = write(tmp_path / "services.json", {"service": TTL_WEB})
    async with running_agent(
        "tcp",
        files=[str(path)],
        gossip_network=MemoryGossipNetwork(),
        node_name="cfg3",
        http_addr="",
    ) as agent:
        assert agent.http is None and agent.http_agent is not None
        bridge = agent.http_agent
        assert "web" in bridge.local.services() and "service:web" in bridge.local.checks()

        async def web_nodes() -> list[Any]:
            reply = await bridge.call(
                "Catalog.ServiceNodes", {"Datacenter": "dc1", "ServiceName": "web"}
            )
            return list(reply["ServiceNodes"] or [])

        nodes = await until(web_nodes)
        assert (nodes[0]["Node"], nodes[0]["ServicePort"]) == ("cfg3", 80)
        write(path, {})
        assert await agent.reload() == ""
        assert "web" not in bridge.local.services()

        async def web_gone() -> bool:
            return not await web_nodes()

        await until(web_gone)
