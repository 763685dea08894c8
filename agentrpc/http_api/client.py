"""A small blocking client of the HTTP API for the command line (stdlib ``http.client``, one
keep-alive connection): what ``agentrpc kv`` and ``agentrpc catalog`` speak.

The address is ``--http-addr``, else ``CONSUL_HTTP_ADDR``, else ``127.0.0.1:8500`` (an
``http://`` prefix is accepted); the token ``--token``, else ``CONSUL_HTTP_TOKEN``, sent as
``X-Consul-Token``. A refused connection, a timeout or an answer other than 2xx/404 raises
:class:`HTTPClientError` with one line saying what happened.

``timeout`` bounds the connect, and then again the whole answer of each request (its status
line, headers and body): a peer that accepts and never answers fails after it instead of
hanging. A peer that answers with something other than HTTP (a gossip, RPC or server port)
is said to be one, never echoed.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Final

from .constants import DEFAULT_HTTP_ADDR, ENV_HTTP_ADDR, ENV_HTTP_TOKEN, HEADER_TOKEN

__all__ = [
    "DEFAULT_TIMEOUT",
    "HTTPAnswer",
    "HTTPClient",
    "HTTPClientError",
    "HTTPTimeoutError",
    "NotHTTPError",
    "resolve_addr",
]

DEFAULT_TIMEOUT: Final = 10.0
"""Seconds to connect, and again for an answer (the agent RPC client's default)."""
MAX_ANSWER_BYTES: Final = 64 << 20


NOT_HTTP_HINT: Final = (
    "is --http-addr the agent's HTTP port? `agentrpc serve` logs it as 'HTTP API listening on'"
)


class HTTPClientError(Exception):
    """The agent could not be reached or refused the request (the text says which)."""


class HTTPTimeoutError(HTTPClientError):
    """Nothing answered within the deadline (connect, or the answer)."""


class NotHTTPError(HTTPClientError):
    """The peer answered, or hung up, as something other than an HTTP server."""


@dataclass(frozen=True, slots=True)
class HTTPAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def resolve_addr(addr: str | None) -> tuple[str, int]:
    text = addr or os.environ.get(ENV_HTTP_ADDR) or DEFAULT_HTTP_ADDR
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme != "http":
            raise HTTPClientError(f"unsupported scheme {scheme!r} in {addr!r} (http only)")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise HTTPClientError(f"invalid HTTP address {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


class HTTPClient:
    """Requests to one agent's HTTP API."""

    def __init__(
        self,
        addr: str | None = None,
        *,
        token: str | None = None,
        datacenter: str = "",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.host, self.port = resolve_addr(addr)
        self.token = token if token is not None else os.environ.get(ENV_HTTP_TOKEN, "")
        self.datacenter = datacenter
        if not (timeout > 0 and timeout < float("inf")):
            raise HTTPClientError(f"invalid timeout {timeout!r}: a positive number of seconds")
        self.timeout = timeout
        self._connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        self._answered = False

    @property
    def where(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> HTTPClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _connect(self) -> None:
        """Connect (within ``timeout``) unless the keep-alive connection is still open."""
        if self._connection.sock is None:
            self._connection.timeout = self.timeout
            self._connection.connect()
            self._answered = False

    def _set_remaining(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        sock = self._connection.sock
        if isinstance(sock, socket.socket):
            sock.settimeout(remaining)

    def request(
        self, method: str, path: str, params: list[tuple[str, str]] | None = None, body: bytes = b""
    ) -> HTTPAnswer:
        query = list(params or ())
        if self.datacenter:
            query.append(("dc", self.datacenter))
        target = urllib.parse.quote(path, safe="/:")
        if query:
            target += "?" + urllib.parse.urlencode(query)
        headers = {"Content-Length": str(len(body))}
        if self.token:
            headers[HEADER_TOKEN] = self.token
        connected = False
        try:
            self._connect()
            connected = True
            deadline = time.monotonic() + self.timeout
            self._set_remaining(deadline)
            self._connection.request(method, target, body=body, headers=headers)
            self._set_remaining(deadline)
            response = self._connection.getresponse()
            self._set_remaining(deadline)
            data = response.read(MAX_ANSWER_BYTES)
        except (OSError, http.client.HTTPException) as exc:
            self._connection.close()
            raise self._error(exc, connected) from None
        self._answered = True
        answer = HTTPAnswer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        if answer.status >= 400 and answer.status != 404:
            text = data.decode("utf-8", "replace").strip()
            raise HTTPClientError(f"Unexpected response code: {answer.status} ({text})")
        return answer

    def _error(self, exc: OSError | http.client.HTTPException, connected: bool) -> HTTPClientError:
        """One line for a request that failed, without the peer's raw bytes."""
        prefix = f"Error connecting to the HTTP API at {self.where}"
        if isinstance(exc, TimeoutError):
            step = "did not answer" if connected else "did not accept the connection"
            return HTTPTimeoutError(
                f"{prefix}: it {step} within {self.timeout:g} s (a stopped or overloaded "
                "agent, or not its HTTP port)"
            )
        first_answer = connected and not self._answered
        if first_answer and isinstance(exc, http.client.RemoteDisconnected | ConnectionError):
            return NotHTTPError(
                f"{prefix}: {self.where} does not speak HTTP (it closed the connection without "
                f"an answer); {NOT_HTTP_HINT}"
            )
        if first_answer and isinstance(exc, http.client.HTTPException):
            return NotHTTPError(
                f"{prefix}: {self.where} does not speak HTTP (its answer is not an HTTP "
                f"response); {NOT_HTTP_HINT}"
            )
        if isinstance(exc, http.client.HTTPException):
            return HTTPClientError(f"{prefix}: malformed HTTP answer ({type(exc).__name__})")
        reason = exc.strerror or str(exc) or type(exc).__name__
        return HTTPClientError(f"{prefix}: {reason}")
