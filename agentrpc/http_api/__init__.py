"""Consul's HTTP API on the agent (h11 on Trio), calling the catalog's RPC endpoints in-process.

Layout, bottom to top:

- ``constants``: the default address, headers, the reference's error texts, the limits;
- ``go_json`` (pure): JSON as Go writes it and as ``mapstructure`` reads it;
- ``messages`` (pure): the request and response, the shared query rules (``?wait``,
  ``?index``, ``?stale``/``?consistent``, ``?dc``, the token) and the ``X-Consul-*`` headers;
- ``shapes`` (pure): the reference's JSON shapes from the RPC replies;
- ``events``: user events (record, serf payload, filters) and the ring of recent ones;
- ``host``: :class:`~agentrpc.http_api.host.HTTPAgent`, what the API needs of the agent;
- ``server`` (Trio, h11): the HTTP/1.1 server and its bounds;
- ``context``, ``kv_endpoints``, ``catalog_endpoints``, ``session_endpoints``,
  ``agent_endpoints``: the handlers;
- ``api``: routing and :func:`~agentrpc.http_api.api.build_http_server`, the agent's entry point.
"""

# Nothing is imported here: importing a pure module of the package (``go_json``, ``messages``,
# ``shapes``) must not load trio through the package. Import from the modules themselves.
