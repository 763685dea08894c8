"""Consensus for server agents: Raft, wire-compatible with hashicorp/raft 1.1.2.

Layout: ``log`` (entries and their types), ``store_api`` (what the core needs of durable
storage), the sans-I/O core and wire codec, the storage back ends (``sqlite_store``, the
embedded default; ``memory_store`` for ``--dev`` and the simulation; ``snapshots``, files
with a checksum; ``store_thread``, the one thread they run in), and a thin Trio engine.
"""
