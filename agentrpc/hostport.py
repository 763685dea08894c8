"""``host:port`` text, the one home for its two rules (pure, no I/O, importable by any layer).

- :func:`join_host_port` writes ``host:port``, with an IPv6 host in brackets (``[::1]:8301``),
  as Go's ``net.JoinHostPort`` does; every log line, reply and tag that names a peer uses it.
- :func:`split_host_port` reads ``host:port``, ``[v6]:port``, ``[v6]``, a bare IPv6 address or
  a bare host; the port is returned as text (``None`` when absent) so that each caller applies
  its own default and range. Malformed text raises :class:`HostPortError`, a ``ValueError``.
"""

from __future__ import annotations

import ipaddress


class HostPortError(ValueError):
    """Text that is not ``host:port`` in any accepted form."""


def join_host_port(host: str, port: int | str) -> str:
    """``host:port``; an IPv6 host (any host holding ``:``) goes in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(text: str) -> tuple[str, str | None]:
    """The host and the port text (``None`` when there is no port) of ``text``."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise HostPortError(f"unclosed '[' in address {text!r}")
        host = text[1:end]
        rest = text[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise HostPortError(f"unexpected text after ']' in address {text!r}")
        return host, rest[1:]
    if text.count(":") > 1:
        # A bare IPv6 address without a port.
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise HostPortError(f"IPv6 address needs brackets with a port: {text!r}") from None
        return text, None
    host, sep, port = text.partition(":")
    return host, (port if sep else None)


def unmapped_ip(addr: str | bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Go's ``net.ParseIP`` (text) or a 4/16-byte address, then ``To4``: an IPv4-mapped IPv6
    address is its IPv4 address; None for anything that is not an address."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
