"""``agentrpc kv`` and ``agentrpc catalog`` (the typer sub-apps, as main.py will register
them) against a real HTTP API on loopback: Consul's texts and exit statuses."""

from __future__ import annotations

import typer
from http_helpers import SERVER, blocking, cluster
from typer.testing import CliRunner

from agentrpc.cli import catalog_command, kv_command

RUNNER = CliRunner()


def run(app: typer.Typer, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = RUNNER.invoke(app, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


async def kv(addr: str, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    return await blocking(run, kv_command.app, *args, "--http-addr", addr, stdin=stdin)


async def test_kv_put_get_recurse_keys_delete_and_cas() -> None:
    async with cluster() as env:
        host, port = env.url()
        addr = f"{host}:{port}"
        assert await kv(addr, "put", "app/a", "one") == (0, "Success! Data written to: app/a\n", "")
        assert (await kv(addr, "put", "app/b", "-", stdin="two"))[0] == 0
        assert await kv(addr, "get", "app/a") == (0, "one\n", "")
        code, out, _ = await kv(addr, "get", "app/", "--recurse")
        assert (code, out) == (0, "app/a:one\napp/b:two\n")
        assert (await kv(addr, "get", "app/", "--keys"))[1] == "app/a\napp/b\n"
        code, out, _ = await kv(addr, "get", "app/a", "--detailed")
        assert code == 0 and "Key              app/a" in out and "Session          -" in out
        modify = int(
            next(line.split()[1] for line in out.splitlines() if line.startswith("ModifyIndex"))
        )
        code, _, err = await kv(
            addr, "put", "app/a", "x", "--cas", "--modify-index", str(modify + 99)
        )
        assert (code, err) == (1, "Error! Did not write to app/a: CAS failed\n")
        assert (await kv(addr, "put", "app/a", "x", "--cas", "--modify-index", str(modify)))[0] == 0
        code, _, err = await kv(addr, "get", "nope")
        assert (code, err) == (1, "Error! No key exists at: nope\n")
        assert await kv(addr, "delete", "app/a") == (0, "Success! Deleted key: app/a\n", "")
        assert await kv(addr, "delete", "app/", "--recurse") == (
            0,
            "Success! Deleted keys with prefix: app/\n",
            "",
        )
        assert (await kv(addr, "get", "app/", "--recurse"))[1] == ""
        code, _, err = await kv("127.0.0.1:1", "get", "x")
        assert code == 1 and "Error connecting to the HTTP API at 127.0.0.1:1" in err


async def test_catalog_datacenters_nodes_services() -> None:
    async with cluster([SERVER, "client-1"]) as env:
        host, port = env.url()
        addr = f"{host}:{port}"

        async def catalog(*args: str) -> tuple[int, str, str]:
            return await blocking(run, catalog_command.app, *args, "--http-addr", addr)

        assert await catalog("datacenters") == (0, "dc1\n", "")
        code, out, _ = await catalog("nodes")
        assert code == 0
        # Consul 0.8's columns; this cluster's nodes are registered without node IDs.
        assert out.splitlines() == [
            "Node      ID  Address    DC",
            "client-1      127.0.0.1  dc1",
            "server-1      127.0.0.1  dc1",
        ]
        assert await catalog("services") == (0, "consul\n", "")
        assert (
            (await catalog("nodes", "--service", "consul"))[1]
            .splitlines()[1]
            .startswith("server-1")
        )
        code, _, err = await catalog("services", "--node", "ghost")
        assert (code, err) == (
            1,
            "No services match the given query - try expanding your search.\n",
        )
