"""The probes behind the agent's HTTP and TCP checks (Consul's ``CheckHTTP`` / ``CheckTCP``),
one attempt each, bounded in time and bytes.

:func:`http_probe` sends one request (h11 over a Trio TCP stream, TLS for ``https``), reads at
most :data:`~agentrpc.local_state.state.CHECK_OUTPUT_LIMIT` bytes of the body and closes;
2xx is passing, 429 warning, anything else (or no answer) critical; the output reads like
the reference's (``HTTP GET <url>: 200 OK Output: <body>``). :func:`tcp_probe` connects and
closes (``TCP connect <addr>: Success``). Both give up after ``time_limit`` seconds. They return
``(status, output)`` and never raise for the target's faults.
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Final

import h11
import trio

from ..catalog.constants import HEALTH_CRITICAL, HEALTH_PASSING, HEALTH_WARNING
from ..hostport import HostPortError, join_host_port, split_host_port
from ..transports import describe_connect_error
from .state import CHECK_OUTPUT_LIMIT

__all__ = ["USER_AGENT", "check_timeout", "http_probe", "tcp_probe"]

USER_AGENT: Final = "Consul Health Check"
ACCEPT: Final = "text/plain, text/*, */*"
DEFAULT_TIMEOUT: Final = 10.0
MAX_RESPONSE_HEAD: Final = 16 * 1024
_READ: Final = 16 * 1024


def check_timeout(interval: float, timeout: float) -> float:
    """The reference's rule: the check's timeout if below its interval, else 10 s, but never
    more than an interval under 10 s."""
    if 0 < timeout < interval:
        return timeout
    if interval < DEFAULT_TIMEOUT:
        return interval
    return DEFAULT_TIMEOUT


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return describe_connect_error(exc)
    return str(exc) or type(exc).__name__


def _split_host_port(target: str) -> tuple[str, int] | None:
    """The host and port of ``host:port`` or ``[v6]:port``; None without a numeric port."""
    try:
        host, port = split_host_port(target)
    except HostPortError:
        return None
    if port is None or not (port.isascii() and port.isdigit()):
        return None
    return host, int(port)


async def tcp_probe(target: str, time_limit: float) -> tuple[str, str]:
    """Connect to ``host:port`` and close."""
    parsed = _split_host_port(target)
    if parsed is None:
        return HEALTH_CRITICAL, f"dial tcp {target}: missing port in address"
    host, port = parsed
    try:
        with trio.fail_after(time_limit):
            stream = await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        return HEALTH_CRITICAL, f"dial tcp {target}: i/o timeout"
    except OSError as exc:
        return HEALTH_CRITICAL, f"dial tcp {target}: connect: {_reason(exc)}"
    await trio.aclose_forcefully(stream)
    return HEALTH_PASSING, f"TCP connect {target}: Success"


def _status_line(code: int, reason: bytes) -> str:
    text = reason.decode("latin-1") if reason else ""
    if not text:
        try:
            text = HTTPStatus(code).phrase
        except ValueError:
            text = ""
    return f"{code} {text}".rstrip()


async def http_probe(
    url: str,
    time_limit: float,
    *,
    method: str = "GET",
    headers: Mapping[str, Sequence[str]] | None = None,
    tls_skip_verify: bool = False,
) -> tuple[str, str]:
    """One request to ``url``; the status it means and the output."""
    method = method or "GET"
    where = f"{method} {url}"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return HEALTH_CRITICAL, f"{where}: unsupported protocol scheme {parts.scheme!r}"
    https = parts.scheme == "https"
    try:
        port = parts.port or (443 if https else 80)
    except ValueError as exc:
        return HEALTH_CRITICAL, f"{where}: {exc}"
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    host_header = parts.netloc.rpartition("@")[2]
    request_headers: list[tuple[str, str]] = [
        ("Host", host_header),
        ("User-Agent", USER_AGENT),
        ("Accept", ACCEPT),
        ("Connection", "close"),
    ]
    for name, values in (headers or {}).items():
        if name.lower() in ("host", "connection", "content-length", "transfer-encoding"):
            continue
        request_headers.extend((name, value) for value in values)
    try:
        with trio.fail_after(time_limit):
            return await _exchange(
                parts.hostname,
                port,
                https,
                tls_skip_verify,
                method,
                target,
                request_headers,
                where,
            )
    except trio.TooSlowError:
        return HEALTH_CRITICAL, (
            f"{where}: net/http: request canceled (Client.Timeout exceeded while awaiting headers)"
        )


async def _exchange(
    host: str,
    port: int,
    https: bool,
    skip_verify: bool,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    where: str,
) -> tuple[str, str]:
    try:
        stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        return HEALTH_CRITICAL, f"{where}: dial tcp {join_host_port(host, port)}: {_reason(exc)}"
    try:
        if https:
            context = ssl.create_default_context()
            if skip_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            stream = trio.SSLStream(stream, context, server_hostname=host)
        connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
        try:
            request = h11.Request(method=method, target=target, headers=headers)
            await stream.send_all(connection.send(request) + connection.send(h11.EndOfMessage()))
            code, reason, body = await _read_response(stream, connection)
        except (h11.ProtocolError, ValueError) as exc:
            return HEALTH_CRITICAL, f"{where}: malformed HTTP response: {exc}"
        except (OSError, trio.BrokenResourceError) as exc:
            return HEALTH_CRITICAL, f"{where}: {_reason(exc)}"
    finally:
        await trio.aclose_forcefully(stream)
    output = f"HTTP {where}: {_status_line(code, reason)} Output: {body}"
    if 200 <= code <= 299:
        return HEALTH_PASSING, output
    if code == 429:
        return HEALTH_WARNING, output
    return HEALTH_CRITICAL, output


async def _read_response(
    stream: trio.abc.Stream, connection: h11.Connection
) -> tuple[int, bytes, str]:
    code = 0
    reason = b""
    body = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_READ)
            connection.receive_data(bytes(data))
            continue
        if isinstance(event, h11.Response):
            code, reason = event.status_code, event.reason
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) >= CHECK_OUTPUT_LIMIT:
                del body[CHECK_OUTPUT_LIMIT:]
                break
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
    return code, bytes(reason), body.decode("utf-8", "replace")
