"""The server port: one TCP port, several protocols chosen by the connection's first byte.

Layers, bottom up: :mod:`.rpc_codec` and :mod:`.yamux` are sans-I/O codecs; :mod:`.tls` builds
SSL contexts; :mod:`.yamux_session` (the multiplexer), :mod:`.endpoints` (the byte-0 RPC
server), :mod:`.router` (the first-byte table) and :mod:`.pool` (outgoing calls) are trio
engines; :mod:`.server` ties a listener to the router; :mod:`.proxy` is the developer proxy.

Import from those modules: the package itself exports nothing, so importing a codec loads
neither trio nor the engines. Consul's agent logic on top of this engine (server discovery,
the WAN-members endpoint) lives in :mod:`agentrpc.consul_servers`.
"""
