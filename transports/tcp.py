"""TCP listeners and dialing, on explicit hosts only (never every interface by accident)."""

from __future__ import annotations

import trio

from .address import Address


async def open_tcp_listeners(address: Address) -> list[trio.SocketListener]:
    """Listen on ``address.host``; port 0 picks a free port (see :func:`bound_addresses`)."""
    return await trio.open_tcp_listeners(address.port, host=address.host)


async def connect_tcp(address: Address) -> trio.SocketStream:
    return await trio.open_tcp_stream(address.host, address.port)


def bound_address(listener: trio.SocketListener) -> Address:
    """The address a TCP listener really bound (the real port when 0 was asked)."""
    sockname = listener.socket.getsockname()
    return Address("tcp", host=str(sockname[0]), port=int(sockname[1]))
