"""TLS for the server port: configuration from files, ``ssl.SSLContext``s, ``trio.SSLStream``.

Semantics follow the reference's ``tlsutil``:

* incoming (type byte 3): the server presents ``cert_file``/``key_file``; with
  ``verify_incoming`` the client must present a certificate signed by ``ca_file``, and plain
  connections (any type byte but 3 and 7) are refused;
* incoming with type byte 7: TLS without asking for a client certificate;
* outgoing: used when ``verify_outgoing`` is set; the server's certificate must chain to
  ``ca_file`` (its host name is checked only when ``server_name`` is given); the client presents
  its own certificate when it has one.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import trio


class TLSConfigError(ValueError):
    """A TLS configuration that cannot work (missing or unreadable files)."""


@dataclass(frozen=True, slots=True)
class TLSConfig:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify_incoming: bool = False
    verify_outgoing: bool = False
    server_name: str | None = None
    """When set, outgoing connections check that the server's certificate names this host."""

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise TLSConfigError("cert_file and key_file must be given together")
        if self.verify_incoming and (self.ca_file is None or self.cert_file is None):
            raise TLSConfigError("verify_incoming needs ca_file, cert_file and key_file")
        if self.verify_outgoing and self.ca_file is None:
            raise TLSConfigError("verify_outgoing needs ca_file")

    @property
    def can_serve(self) -> bool:
        """True when this side has a certificate to accept TLS connections with."""
        return self.cert_file is not None

    @property
    def outgoing(self) -> bool:
        """True when outgoing connections use TLS (the reference's ``UseTLS``)."""
        return self.verify_outgoing

    def server_context(self, *, verify_client: bool) -> ssl.SSLContext:
        """The context for incoming TLS; ``verify_client`` requires a client certificate."""
        if self.cert_file is None or self.key_file is None:
            raise TLSConfigError("incoming TLS needs cert_file and key_file")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
            if verify_client:
                assert self.ca_file is not None
                context.load_verify_locations(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(f"cannot load TLS files: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED if verify_client else ssl.CERT_NONE
        return context

    def client_context(self) -> ssl.SSLContext:
        """The context for outgoing TLS (the server's certificate is always verified)."""
        if self.ca_file is None:
            raise TLSConfigError("outgoing TLS needs ca_file")
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.check_hostname = self.server_name is not None
            context.verify_mode = ssl.CERT_REQUIRED
            if self.cert_file is not None and self.key_file is not None:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(f"cannot load TLS files: {exc}") from None
        return context


def wrap_server(
    stream: trio.abc.Stream, context: ssl.SSLContext
) -> trio.SSLStream[trio.abc.Stream]:
    """Server side of TLS over ``stream`` (the handshake runs on first use)."""
    return trio.SSLStream(stream, context, server_side=True)


def wrap_client(
    stream: trio.abc.Stream, context: ssl.SSLContext, server_hostname: str | None = None
) -> trio.SSLStream[trio.abc.Stream]:
    """Client side of TLS over ``stream`` (the handshake runs on first use)."""
    return trio.SSLStream(stream, context, server_hostname=server_hostname)
