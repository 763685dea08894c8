"""Helpers for the catalog tests: a store driver with a Raft index counter, an in-process
catalog behind a (not listening) server port, and a recursive check of go-msgpack's key order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from agentrpc.catalog.fsm import ConsulFSM, encode_command
from agentrpc.catalog.service import Catalog, install
from agentrpc.catalog.state_store import StateStore
from agentrpc.catalog.structs import (
    DirEntry,
    HealthCheck,
    NodeService,
    RegisterRequest,
    Session,
)
from agentrpc.log_protocol import CaptureLog
from agentrpc.raft.log import LogEntry, LogType
from agentrpc.serverport.endpoints import Endpoints
from agentrpc.serverport.server import ServerPort

DC = "dc1"


class Driver:
    """A state store and a growing Raft index (every write takes the next one)."""

    def __init__(self) -> None:
        self.store = StateStore()
        self.index = 1
        self.now = 1000.0

    def next(self) -> int:
        self.index += 1
        return self.index

    def node(self, name: str, address: str = "10.0.0.1", **extra: Any) -> int:
        idx = self.next()
        self.store.ensure_registration(
            idx, RegisterRequest(node=name, address=address, **extra), self.now
        )
        return idx

    def service(self, node: str, sid: str, name: str | None = None, **extra: Any) -> int:
        idx = self.next()
        request = RegisterRequest(
            node=node, address=self._address(node), service=NodeService(sid, name or sid, **extra)
        )
        self.store.ensure_registration(idx, request, self.now)
        return idx

    def check(self, node: str, cid: str, status: str = "passing", service_id: str = "") -> int:
        idx = self.next()
        request = RegisterRequest(
            node=node,
            address=self._address(node),
            checks=[HealthCheck(node, cid, name=cid, status=status, service_id=service_id)],
        )
        self.store.ensure_registration(idx, request, self.now)
        return idx

    def _address(self, node: str) -> str:
        found = self.store.get_node(node)[1]
        return found.address if found is not None else "10.0.0.1"

    def session(self, sid: str, node: str, **extra: Any) -> int:
        idx = self.next()
        self.store.session_create(idx, Session(sid, node=node, **extra))
        return idx

    def set(self, key: str, value: bytes = b"v", **extra: Any) -> int:
        idx = self.next()
        self.store.kvs_set(idx, DirEntry(key, value, **extra))
        return idx


def assert_go_key_order(value: Any, path: str = "$") -> None:
    """Every map's keys in go-msgpack's struct order (sorted), recursively. Maps whose keys
    are data (Services by ID, TaggedAddresses, Indexes) are sorted too, so the rule holds."""
    if isinstance(value, dict):
        keys = list(value)
        assert keys == sorted(keys), f"{path}: keys not sorted: {keys}"
        for key, item in value.items():
            assert_go_key_order(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for position, item in enumerate(value):
            assert_go_key_order(item, f"{path}[{position}]")


def command(index: int, msg_type: int, body: dict[str, Any]) -> LogEntry:
    return LogEntry(index, 1, LogType.COMMAND, encode_command(msg_type, body))


@dataclass
class InProcess:
    """A lone-server catalog behind a server port that is not listening: calls go through
    the router on memory streams (the path the HTTP API and DNS use)."""

    catalog: Catalog
    port: ServerPort
    endpoints: Endpoints
    log: CaptureLog

    async def call(self, method: str, args: Any) -> Any:
        return await self.port.call_local(method, args)

    @property
    def fsm(self) -> ConsulFSM:
        return self.catalog.fsm


def in_process(**kwargs: Any) -> InProcess:
    endpoints = Endpoints()
    log = CaptureLog()
    catalog = install(
        endpoints,
        datacenter=DC,
        node_name="server-1",
        server_address=lambda: "127.0.0.1:8300",
        logger=log,
        **kwargs,
    )
    port = ServerPort("127.0.0.1:0", endpoints, None, log)
    return InProcess(catalog, port, endpoints, log)


@asynccontextmanager
async def running_duties(env: InProcess) -> AsyncIterator[None]:
    """The lone server's leader duties, cancelled on exit."""
    async with trio.open_nursery() as nursery:
        await nursery.start(env.catalog.duties.run)
        try:
            yield
        finally:
            nursery.cancel_scope.cancel()
