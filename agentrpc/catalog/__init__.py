"""Consul's catalog on a server agent: the state store, its FSM, the endpoint structs and
handlers, blocking queries and the leader's duties (Consul 0.7 semantics, its wire shapes).

Layout, bottom to top (the first eight are pure: no trio, no I/O, time and randomness passed
in):

- ``constants``: the one home of the catalog's wire constants (message types, ops, statuses,
  error texts, limits);
- ``go_text``: Go's ``time.ParseDuration`` / ``Duration.String`` and ``strconv.Quote``, for
  the error texts and TTLs that must match the reference byte for byte;
- ``structs``: the request, reply and record structs as the wire has them (msgpack maps with
  Go's field names, keys sorted as go-msgpack writes them), tolerant decoders;
- ``watch``: watch sets (what a read depended on), the changes a write made, and the registry
  that tells which waiters a change wakes;
- ``state_store``: the tables, their indexes and Consul's semantics for every write and read;
- ``fsm``: Raft log entries (type byte + msgpack) applied to the store; snapshot and restore
  in Consul's snapshot format;
- ``rules``: the endpoints' checks before Raft (the reference's error texts and defaults),
  routing (local, leader, other datacenter), the blocking-query wait, session IDs;
- ``leader``: the leader's decisions (serf reconciliation, session TTL timers, tombstone GC);
- ``consensus`` (Trio): the write path (:class:`~agentrpc.catalog.consensus.Applier`) and the
  read path's consensus facts, with the lone-server implementations;
- ``hub`` (Trio): the one owner of the FSM that wakes exactly the waiters a write concerns;
- ``blocking`` (Trio): the blocking-query loop of ``blockingRPC``;
- ``endpoints`` (Trio): the RPC handlers registered on the server port;
- ``duties`` (Trio): the leader's tasks (session TTLs, tombstone reaping, reconciliation);
- ``service``: :func:`~agentrpc.catalog.service.install`, the agent's one entry point.
"""
