"""``agentrpc keyring``: Consul 0.7's ``consul keyring`` over the agent RPC.

``--list`` gathers every node's keys, ``--install``, ``--use`` and ``--remove`` change the
gossip keyring of every node; on a server the WAN pool and the LAN pool move in lock-step.
The output is Consul's (``==> Gathering installed encryption keys...``, then each pool and
its keys with ``[holders/nodes]``); a pool where the operation failed is one line on stderr
with the nodes' messages, and exit status 1, as Consul exits 1 when a node fails or does not
answer. ``--json`` prints the reply's pools, keys and messages.

Registered on the main app by ``register(app)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Annotated

import typer

from ..client import DEFAULT_TIMEOUT, Client, KeyringResult
from ..defaults import DEFAULT_RPC_ADDR
from .agent_options import AsJson, RpcAddr, Timeout, Token, agent_options, print_json, run_client
from .common import echo, fail

ACTIONS = "--list, --install, --use or --remove"


def pool_label(datacenter: str, pool: str) -> str:
    """Consul's name of a pool in the keyring output: ``WAN``, or ``dc1 (LAN)``."""
    return "WAN" if pool == "WAN" else f"{datacenter} (LAN)"


def failure_line(result: KeyringResult) -> str:
    """Every failed pool, with its nodes' messages, in one line ("" when none failed)."""
    parts = []
    for info in result.failed:
        nodes = [
            f"{message.node}: {message.message}"
            for message in result.messages
            if (message.datacenter, message.pool) == (info.datacenter, info.pool)
        ]
        detail = f" ({'; '.join(nodes)})" if nodes else ""
        parts.append(f"{pool_label(info.datacenter, info.pool)} error: {info.error}{detail}")
    return "; ".join(parts)


def list_lines(result: KeyringResult) -> list[str]:
    """Consul's ``handleList``: a blank line and ``POOL:`` per pool, then ``  KEY [n/N]``."""
    pools: dict[str, list[str]] = {}
    for entry in result.keys:
        label = pool_label(entry.datacenter, entry.pool)
        pools.setdefault(label, []).append(f"  {entry.key} [{entry.count}/{entry.num_nodes}]")
    lines = []
    for label, keys in pools.items():
        lines += ["", f"{label}:", *keys]
    return lines


def result_json(result: KeyringResult) -> dict[str, object]:
    return {
        "pools": [asdict(info) for info in result.info],
        "keys": [asdict(entry) for entry in result.keys],
        "messages": [asdict(message) for message in result.messages],
    }


def register(app: typer.Typer) -> None:
    """Add the ``keyring`` command to ``app``."""

    @app.command()
    def keyring(
        list_keys: Annotated[
            bool, typer.Option("--list", help="List the keys of every node.")
        ] = False,
        install: Annotated[
            str, typer.Option("--install", help="Install a new base64 key on every node.")
        ] = "",
        use: Annotated[
            str, typer.Option("--use", help="Make an installed key the primary (encrypting) key.")
        ] = "",
        remove: Annotated[
            str, typer.Option("--remove", help="Remove a key that is not the primary one.")
        ] = "",
        rpc_addr: RpcAddr = DEFAULT_RPC_ADDR,
        token: Token = "",
        timeout: Timeout = DEFAULT_TIMEOUT,
        as_json: AsJson = False,
    ) -> None:
        """Manage the gossip encryption keys of the cluster (server agents only).

        Exit status 1 when any node fails or does not answer, as Consul's."""
        chosen = [bool(list_keys), bool(install), bool(use), bool(remove)]
        if sum(chosen) > 1:
            fail(f"Only a single action is allowed: one of {ACTIONS}.")
        if not any(chosen):
            fail(f"An action is required: one of {ACTIONS} (see `agentrpc keyring --help`).")
        agent = agent_options(rpc_addr, token, timeout)
        action: Callable[[Client], Awaitable[KeyringResult]]
        if list_keys:
            banner, action = "Gathering installed encryption keys...", _list
        elif install:
            banner, action = "Installing new gossip encryption key...", _key("install", install)
        elif use:
            banner, action = "Changing primary gossip encryption key...", _key("use", use)
        else:
            banner, action = "Removing gossip encryption key...", _key("remove", remove)
        if not as_json:
            echo(f"==> {banner}")
        result = run_client(agent, action, "error")
        if as_json:
            print_json(result_json(result))
        failure = failure_line(result)
        if failure:
            fail(failure)
        if not as_json:
            echo("==> Done!")
            if list_keys:
                for line in list_lines(result):
                    echo(line)


async def _list(client: Client) -> KeyringResult:
    return await client.list_keys()


def _key(operation: str, key: str) -> Callable[[Client], Awaitable[KeyringResult]]:
    async def run(client: Client) -> KeyringResult:
        if operation == "install":
            return await client.install_key(key)
        if operation == "use":
            return await client.use_key(key)
        return await client.remove_key(key)

    return run


__all__ = ["failure_line", "list_lines", "pool_label", "register"]
