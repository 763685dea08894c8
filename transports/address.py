"""Parsing of listen and dial addresses: ``HOST:PORT``, ``[v6]:PORT``, ``unix:///path``, ``memory://name``."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import Literal

from agentrpc.hostport import HostPortError, join_host_port, split_host_port


class AddressError(ValueError):
    """An address that cannot be parsed or used."""


@dataclass(frozen=True, slots=True)
class Address:
    """Where a stream listener listens or a client dials."""

    kind: Literal["tcp", "unix", "memory"]
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix://{self.path}"
        if self.kind == "memory":
            return f"memory://{self.path}"
        return join_host_port(self.host, self.port)

    @property
    def is_loopback(self) -> bool:
        if self.kind != "tcp":
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_address(text: str, *, default_port: int | None = None) -> Address:
    """Parse an address; ``default_port`` fills in a missing port (else a port is required).

    A bare path starting with ``/`` is a unix socket, as the reference client treats it.
    """
    text = text.strip()
    if not text:
        raise AddressError("empty address")
    if text.startswith("unix://"):
        path = text[len("unix://") :]
        if not path.startswith("/"):
            raise AddressError(f"unix socket address needs an absolute path: {text!r}")
        return Address("unix", path=path)
    if text.startswith("/"):
        return Address("unix", path=text)
    if text.startswith("memory://"):
        name = text[len("memory://") :]
        if not name:
            raise AddressError("memory address needs a name: memory://NAME")
        return Address("memory", path=name)
    if "://" in text:
        raise AddressError(f"unknown address scheme in {text!r}")
    try:
        host, port_text = split_host_port(text)
    except HostPortError as exc:
        raise AddressError(str(exc)) from None
    if port_text is None:
        if default_port is None:
            raise AddressError(f"address {text!r} needs a port (HOST:PORT)")
        port = default_port
    else:
        if not port_text.isdigit():
            raise AddressError(f"invalid port in address {text!r}")
        port = int(port_text)
    if not 0 <= port <= 65535:
        raise AddressError(f"port out of range in address {text!r}")
    if not host:
        raise AddressError(f"address {text!r} needs a host")
    return Address("tcp", host=host, port=port)


def describe_connect_error(exc: OSError) -> str:
    """The most specific reason a connection attempt failed, in lower case ("connection
    refused"); trio groups one error per address tried under a generic message."""
    candidates: list[BaseException] = [exc]
    if isinstance(exc.__cause__, BaseExceptionGroup):
        candidates[:0] = exc.__cause__.exceptions
    elif exc.__cause__ is not None:
        candidates.insert(0, exc.__cause__)
    for candidate in candidates:
        if isinstance(candidate, socket.gaierror) and candidate.strerror:
            return candidate.strerror.lower()
        if isinstance(candidate, OSError) and candidate.errno:
            return os.strerror(candidate.errno).lower()
    return str(exc).lower()
