"""Transports: how bytes move (TCP, unix sockets, in-memory streams), behind one interface.

``open_listeners(address)`` gives listeners of ``trio.abc.Stream`` and the addresses they really
bound; ``connect(address)`` gives a connected ``trio.abc.Stream``. Nothing above this package
knows which transport is in use.
"""

from __future__ import annotations

import trio

from .address import Address, AddressError, describe_connect_error, parse_address
from .memory import DEFAULT_NETWORK, MemoryListener, MemoryNetwork, memory_stream_pair
from .tcp import bound_address, connect_tcp, open_tcp_listeners
from .unix import connect_unix, open_unix_listener

__all__ = [
    "DEFAULT_NETWORK",
    "Address",
    "AddressError",
    "BoundListener",
    "MemoryListener",
    "MemoryNetwork",
    "connect",
    "describe_connect_error",
    "memory_stream_pair",
    "open_listeners",
    "parse_address",
]

BoundListener = tuple[trio.abc.Listener[trio.abc.Stream], Address]


async def open_listeners(
    address: Address, *, network: MemoryNetwork = DEFAULT_NETWORK
) -> list[BoundListener]:
    """Listeners for ``address`` with the address each one really bound."""
    if address.kind == "tcp":
        return [
            (listener, bound_address(listener)) for listener in await open_tcp_listeners(address)
        ]
    if address.kind == "unix":
        return [(await open_unix_listener(address), address)]
    return [(network.listen(address.path), address)]


async def connect(address: Address, *, network: MemoryNetwork = DEFAULT_NETWORK) -> trio.abc.Stream:
    """A stream connected to ``address``; ``OSError`` when nobody answers."""
    if address.kind == "tcp":
        return await connect_tcp(address)
    if address.kind == "unix":
        return await connect_unix(address)
    return await network.connect(address.path)
