"""Helpers for the DNS tests: a lone-server catalog behind a (not listening) server port, a
DNS server answering from it through the in-process call, queries with dnspython and dig.

The catalog is built as the agent builds it (``Endpoints`` + ``catalog.service.install`` +
``ServerPort``), and filled through ``Catalog.Register`` like any client would fill it.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import dns.asyncquery
import dns.message
import dns.rrset
import pytest
import trio

from agentrpc.catalog.constants import ERR_NO_DC_PATH, ERR_NO_LEADER
from agentrpc.catalog.service import Catalog, install
from agentrpc.dns.server import DNSLimits, DNSServer
from agentrpc.dns.settings import DNSConfig
from agentrpc.gossip.contract import GossipAddress, GossipTransport
from agentrpc.log_protocol import CaptureLog, LogLike
from agentrpc.serverport.endpoints import EndpointError, Endpoints
from agentrpc.serverport.server import ServerPort

DC = "dc1"
TIMEOUT = 5.0
"""Seconds a single query may take in a loopback test before the test fails."""


class Forwarder:
    """Forwards requests for other datacenters to their catalogs in-process (the part of
    cross-datacenter forwarding the DNS interface relies on: the Datacenter it passes), and
    records every forwarded call."""

    def __init__(self, local: str) -> None:
        self.local = local
        self.remote: dict[str, CatalogEnv] = {}
        self.forwarded: list[tuple[str, str, Any]] = []

    async def forward_leader(self, method: str, body: Any) -> Any:
        await trio.lowlevel.checkpoint()
        raise EndpointError(ERR_NO_LEADER)

    async def forward_datacenter(self, datacenter: str, method: str, body: Any) -> Any:
        self.forwarded.append((datacenter, method, body))
        env = self.remote.get(datacenter)
        if env is None:
            await trio.lowlevel.checkpoint()
            raise EndpointError(ERR_NO_DC_PATH)
        return await env.call(method, body)

    def datacenters(self) -> list[str]:
        return [self.local, *sorted(self.remote)]


@dataclass
class CatalogEnv:
    catalog: Catalog
    port: ServerPort
    log: CaptureLog
    datacenter: str
    forwarder: Forwarder
    calls: list[tuple[str, Any]] = field(default_factory=list)

    async def call(self, method: str, args: Any) -> Any:
        self.calls.append((method, args))
        return await self.port.call_local(method, args)

    async def register(
        self,
        node: str,
        address: str,
        *,
        service: str = "",
        service_id: str = "",
        port: int = 0,
        tags: Sequence[str] = (),
        service_address: str = "",
        node_status: str = "",
        service_status: str = "",
        tagged_addresses: dict[str, str] | None = None,
    ) -> None:
        """A node (and optionally one service instance and a node and/or service check)."""
        body: dict[str, Any] = {
            "Datacenter": self.datacenter,
            "Node": node,
            "Address": address,
            "TaggedAddresses": tagged_addresses,
        }
        sid = service_id or service
        if service:
            body["Service"] = {
                "ID": sid,
                "Service": service,
                "Tags": list(tags),
                "Port": port,
                "Address": service_address,
            }
        checks = []
        if node_status:
            checks.append({"Node": node, "CheckID": "serfHealth", "Status": node_status})
        if service_status and service:
            checks.append(
                {
                    "Node": node,
                    "CheckID": f"service:{sid}",
                    "Status": service_status,
                    "ServiceID": sid,
                }
            )
        if checks:
            body["Checks"] = checks
        await self.call("Catalog.Register", body)


def catalog_env(datacenter: str = DC) -> CatalogEnv:
    endpoints = Endpoints()
    log = CaptureLog()
    forwarder = Forwarder(datacenter)
    catalog = install(
        endpoints,
        datacenter=datacenter,
        node_name=f"server-{datacenter}",
        server_address=lambda: "127.0.0.1:8300",
        logger=log,
        forwarder=forwarder,
    )
    port = ServerPort("127.0.0.1:0", endpoints, None, log)
    return CatalogEnv(catalog, port, log, datacenter, forwarder)


@asynccontextmanager
async def running_dns(
    env: CatalogEnv,
    config: DNSConfig | None = None,
    *,
    limits: DNSLimits | None = None,
    transport: GossipTransport | None = None,
    bind: str = "127.0.0.1:0",
    rng: random.Random | None = None,
    logger: LogLike | None = None,
) -> AsyncIterator[tuple[DNSServer, GossipAddress]]:
    """A DNS server for ``env`` serving on ``bind``; cancelled on exit."""
    server = DNSServer(
        config or DNSConfig(),
        datacenter=env.datacenter,
        node_name="agent-one",
        call=env.call,
        logger=logger if logger is not None else env.log,
        limits=limits,
        transport=transport,
        rng=rng or random.Random(7),
        clock=lambda: 1_700_000_000.0,
    )
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run, bind)
        try:
            yield server, address
        finally:
            nursery.cancel_scope.cancel()


async def udp(query: dns.message.Message, address: GossipAddress) -> dns.message.Message:
    return await dns.asyncquery.udp(
        query, address.host, port=address.port, timeout=TIMEOUT, ignore_unexpected=True
    )


async def tcp(query: dns.message.Message, address: GossipAddress) -> dns.message.Message:
    return await dns.asyncquery.tcp(query, address.host, port=address.port, timeout=TIMEOUT)


def records(section: Iterable[dns.rrset.RRset]) -> list[tuple[str, int, str, int]]:
    """Every record of a section as (owner, type, rdata text, ttl)."""
    return [
        (rrset.name.to_text(), int(rrset.rdtype), rdata.to_text(), rrset.ttl)
        for rrset in section
        for rdata in rrset
    ]


def dig_binary() -> str:
    path = shutil.which("dig")
    if path is None:
        pytest.fail("dig is not installed (apt-get install dnsutils; scripts/test.sh does)")
    return path


def dig_records(output: str) -> list[str]:
    """The record lines of dig's output, whitespace collapsed: ``"a.consul. 0 IN A 1.2.3.4"``."""
    return [
        " ".join(line.split())
        for line in output.splitlines()
        if line.strip() and not line.startswith(";")
    ]


async def dig(address: GossipAddress, *args: str) -> str:
    """``dig @host -p port ARGS`` (one try, 3 s); its standard output."""
    command = [
        dig_binary(),
        f"@{address.host}",
        "-p",
        str(address.port),
        "+time=3",
        "+tries=1",
        *args,
    ]
    with trio.fail_after(TIMEOUT * 2):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True)
    return bytes(done.stdout).decode()
