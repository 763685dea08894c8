"""Consul's DNS interface on the agent: the catalog answered over DNS (UDP and TCP).

Layout, bottom to top (the first four are pure: no trio, no I/O, time and randomness passed
in; the wire format is dnspython's):

- ``settings``: :class:`~agentrpc.dns.settings.DNSConfig` (Consul 0.7's ``domain`` and
  ``dns_config`` keys, with its defaults), the parser of a ``dns_config`` object, the DNS
  port and the size limits;
- ``names``: query names to lookups (node, service, RFC 2782, prepared query, ``.addr.``,
  reverse, apex), as the reference's ``dispatch`` reads them;
- ``wire``: datagrams and TCP messages to queries (or a drop, or a short refusal), responses
  rendered within the size a query allows, the TCP framing;
- ``resolver``: one question from query to response, a state machine that asks for catalog
  calls (``Catalog.NodeServices``, ``Health.ServiceNodes``, ...) and is fed their replies;
- ``server`` (Trio): UDP and TCP on one address, the in-process catalog calls, the bounds and
  the stats.

The one dependency on the rest of the agent is the in-process call
(``ServerPort.call_local``), the local datacenter and node name, and the settings. This
package imports nothing by itself, so that importing a pure module loads no trio: import
:class:`~agentrpc.dns.server.DNSServer` from ``agentrpc.dns.server`` and
:class:`~agentrpc.dns.settings.DNSConfig` from ``agentrpc.dns.settings``.
"""
