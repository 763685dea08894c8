"""Cluster membership as hashicorp/raft 1.1.2 keeps it (``configuration.go``), pure.

A :class:`Configuration` is the list of servers (ID, address, suffrage) written into the log as
a ``LogConfiguration`` entry (:func:`encode_configuration`: the msgpack map
``{"Servers": [{"Address", "ID", "Suffrage"}, ...]}``) or, by protocol versions below 2, as the
legacy peer list (:func:`encode_peers`: a msgpack array of voter addresses).

Every server tracks two configurations (:class:`Configurations`): the *latest* in its log, which
takes effect as soon as it is appended (before it commits), and the *committed* one. Quorums
are counted over the latest configuration's voters (:meth:`Configuration.quorum_size`), and a
leader changes membership one server at a time (:func:`next_configuration`), only when the
latest configuration is committed. :func:`check_configuration` refuses what Go refuses, with
Go's error texts byte for byte (the ``%v`` renderings included).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from .gomsgpack import (
    DecodeError,
    bytes_field,
    int_field,
    pack,
    struct_fields,
    text,
    text_bytes,
    unpack,
)


class Suffrage(enum.IntEnum):
    """``raft.ServerSuffrage``: numbers written into the log, never to be renumbered."""

    VOTER = 0
    NONVOTER = 1
    STAGING = 2


_SUFFRAGE_NAMES: dict[int, str] = {
    Suffrage.VOTER: "Voter",
    Suffrage.NONVOTER: "Nonvoter",
    Suffrage.STAGING: "Staging",
}


def suffrage_name(suffrage: int) -> str:
    """Go's ``ServerSuffrage.String()``: ``Voter``, ``Nonvoter``, ``Staging`` or, for a number
    it does not know, ``ServerSuffrage``."""
    return _SUFFRAGE_NAMES.get(suffrage, "ServerSuffrage")


class ConfigurationError(ValueError):
    """A configuration (or a change to one) that Raft refuses; the message is Go's."""


@dataclass(frozen=True, slots=True)
class Server:
    """``raft.Server``: a voter, non-voter or staging server with its unique ID and address."""

    id: str
    address: str
    suffrage: int = Suffrage.VOTER

    def go_value(self) -> str:
        """Go's ``%v`` of the struct: ``{Voter id address}``."""
        return f"{{{suffrage_name(self.suffrage)} {self.id} {self.address}}}"

    def go_fields(self) -> str:
        """Go's ``%+v`` of the struct: ``{Suffrage:Voter ID:id Address:address}``."""
        return f"{{Suffrage:{suffrage_name(self.suffrage)} ID:{self.id} Address:{self.address}}}"


@dataclass(frozen=True, slots=True)
class Configuration:
    """``raft.Configuration``: the servers of the cluster, in the order they were added."""

    servers: tuple[Server, ...] = ()

    @classmethod
    def of(cls, servers: Iterable[Server]) -> Configuration:
        return cls(tuple(servers))

    def server(self, server_id: str) -> Server | None:
        for server in self.servers:
            if server.id == server_id:
                return server
        return None

    def server_at(self, address: str) -> Server | None:
        for server in self.servers:
            if server.address == address:
                return server
        return None

    def has_vote(self, server_id: str) -> bool:
        """Go's ``hasVote``: the server is in the configuration as a voter."""
        server = self.server(server_id)
        return server is not None and server.suffrage == Suffrage.VOTER

    def voters(self) -> list[Server]:
        return [server for server in self.servers if server.suffrage == Suffrage.VOTER]

    def quorum_size(self) -> int:
        """Votes (or matching logs) a decision needs: a majority of the voters."""
        return len(self.voters()) // 2 + 1

    def go_value(self) -> str:
        """Go's ``%v`` of the struct: ``{[{Voter a 10.0.0.1:8300} ...]}``."""
        return "{[" + " ".join(server.go_value() for server in self.servers) + "]}"

    def go_servers(self) -> str:
        """Go's ``%+v`` of ``Servers`` (the ``latest_configuration`` stat)."""
        return "[" + " ".join(server.go_fields() for server in self.servers) + "]"


EMPTY_CONFIGURATION = Configuration()


def check_configuration(configuration: Configuration) -> None:
    """Go's ``checkConfiguration``: :class:`ConfigurationError` with its exact text."""
    ids: set[str] = set()
    addresses: set[str] = set()
    voters = 0
    for server in configuration.servers:
        if server.id == "":
            raise ConfigurationError(f"Empty ID in configuration: {configuration.go_value()}")
        if server.address == "":
            raise ConfigurationError(f"Empty address in configuration: {server.go_value()}")
        if server.id in ids:
            raise ConfigurationError(f"Found duplicate ID in configuration: {server.id}")
        ids.add(server.id)
        if server.address in addresses:
            raise ConfigurationError(f"Found duplicate address in configuration: {server.address}")
        addresses.add(server.address)
        if server.suffrage == Suffrage.VOTER:
            voters += 1
    if voters == 0:
        raise ConfigurationError(
            f"Need at least one voter in configuration: {configuration.go_value()}"
        )


class ChangeCommand(enum.IntEnum):
    """``raft.ConfigurationChangeCommand`` (never serialized; kept in Go's order)."""

    ADD_STAGING = 0
    """AddVoter: in 1.1.2 the server is added as a voter at once (promotion is unimplemented)."""
    ADD_NONVOTER = 1
    DEMOTE_VOTER = 2
    REMOVE_SERVER = 3
    PROMOTE = 4


@dataclass(frozen=True, slots=True)
class ConfigurationChange:
    """A change a leader is asked to make; ``prev_index`` (when not 0) is the only latest
    configuration index it may be applied to."""

    command: ChangeCommand
    server_id: str
    server_address: str = ""
    prev_index: int = 0


def next_configuration(
    current: Configuration, current_index: int, change: ConfigurationChange
) -> Configuration:
    """Go's ``nextConfiguration``: the configuration after ``change``, checked."""
    if change.prev_index > 0 and change.prev_index != current_index:
        raise ConfigurationError(
            f"Configuration changed since {change.prev_index} (latest is {current_index})"
        )
    servers = list(current.servers)
    position = next((i for i, s in enumerate(servers) if s.id == change.server_id), None)
    command = change.command
    if command in (ChangeCommand.ADD_STAGING, ChangeCommand.ADD_NONVOTER):
        suffrage = Suffrage.VOTER if command == ChangeCommand.ADD_STAGING else Suffrage.NONVOTER
        new = Server(change.server_id, change.server_address, suffrage)
        if position is None:
            servers.append(new)
        else:
            old = servers[position]
            # A voter stays a voter (AddNonvoter never demotes); only its address changes.
            keep = old.suffrage == Suffrage.VOTER or (
                command == ChangeCommand.ADD_NONVOTER and old.suffrage != Suffrage.NONVOTER
            )
            servers[position] = Server(old.id, change.server_address, old.suffrage) if keep else new
    elif command == ChangeCommand.DEMOTE_VOTER:
        if position is not None:
            old = servers[position]
            servers[position] = Server(old.id, old.address, Suffrage.NONVOTER)
    elif command == ChangeCommand.REMOVE_SERVER:
        if position is not None:
            del servers[position]
    elif (
        command == ChangeCommand.PROMOTE
        and position is not None
        and servers[position].suffrage == Suffrage.STAGING
    ):
        staging = servers[position]
        servers[position] = Server(staging.id, staging.address, Suffrage.VOTER)
    configuration = Configuration(tuple(servers))
    check_configuration(configuration)
    return configuration


# ------------------------------------------------------------------------------ encoding


def encode_configuration(configuration: Configuration) -> bytes:
    """``EncodeConfiguration``: the go-msgpack bytes of the struct (a nil ``Servers`` when the
    configuration is empty, as Go's zero value)."""
    servers = [
        {
            "Address": text_bytes(server.address),
            "ID": text_bytes(server.id),
            "Suffrage": int(server.suffrage),
        }
        for server in configuration.servers
    ]
    return pack({"Servers": servers or None})


def decode_configuration(data: bytes) -> Configuration:
    """``DecodeConfiguration``; :class:`~agentrpc.raft.gomsgpack.DecodeError` on bad bytes
    (where Go panics)."""
    fields = struct_fields(unpack(data, max_size=max(len(data), 1)), "Configuration")
    raw_servers = fields.get("Servers")
    if raw_servers is None:
        return EMPTY_CONFIGURATION
    if type(raw_servers) is not list:
        raise DecodeError("Configuration.Servers must be an array")
    servers = []
    for raw in raw_servers:
        server = struct_fields(raw, "Server")
        servers.append(
            Server(
                id=text(bytes_field(server, "ID")),
                address=text(bytes_field(server, "Address")),
                suffrage=int_field(server, "Suffrage"),
            )
        )
    return Configuration(tuple(servers))


def encode_peers(configuration: Configuration) -> bytes:
    """``encodePeers``: the voters' addresses as a msgpack array of raw strings (nil when
    there are none)."""
    peers = [text_bytes(server.address) for server in configuration.voters()]
    return pack(peers or None)


def decode_peers(data: bytes) -> Configuration:
    """``decodePeers``: every peer is a voter whose ID is its address."""
    peers = unpack(data, max_size=max(len(data), 1))
    if peers is None:
        return EMPTY_CONFIGURATION
    if type(peers) is not list or any(type(peer) is not bytes for peer in peers):
        raise DecodeError("peers must be an array of byte strings")
    return Configuration(tuple(Server(text(p), text(p), Suffrage.VOTER) for p in peers))


# ------------------------------------------------------------------------------ tracking


class Configurations:
    """The latest and the committed configuration and the log indexes they were written at
    (Go's ``configurations``), derived from what the node holds: the configuration of its
    snapshot (the *base*) and the configuration entries of its log after the snapshot.

    * latest: the last configuration entry in the log (it takes effect when appended), else
      the base;
    * committed: the last configuration entry at or below the commit index, else the base.

    Go keeps the same two values by hand (appending makes the previous latest "committed", a
    truncation reverts latest to committed); deriving them also covers a log whose tail holds
    entries of an older term, and gives the configuration as of any applied index (what a
    snapshot must record). Configuration entries are rare, so the list stays tiny."""

    __slots__ = ("_base", "_base_index", "_commit_index", "_entries")

    def __init__(self, base: Configuration = EMPTY_CONFIGURATION, base_index: int = 0) -> None:
        self._base = base
        self._base_index = base_index
        self._entries: list[tuple[int, Configuration]] = []
        self._commit_index = 0

    # -- changes

    def appended(self, index: int, configuration: Configuration) -> None:
        """A configuration entry was appended at ``index`` (after every one held)."""
        while self._entries and self._entries[-1][0] >= index:
            self._entries.pop()
        self._entries.append((index, configuration))

    def truncated(self, first_removed: int) -> None:
        """Log entries from ``first_removed`` on were deleted."""
        while self._entries and self._entries[-1][0] >= first_removed:
            self._entries.pop()

    def committed_through(self, commit_index: int) -> None:
        self._commit_index = max(self._commit_index, commit_index)

    def compacted(self, snapshot_index: int, base: Configuration, base_index: int) -> None:
        """A snapshot at ``snapshot_index`` now holds the log before it: its configuration is
        the base, entries at or below it are dropped."""
        self._base, self._base_index = base, base_index
        self._entries = [(i, c) for i, c in self._entries if i > snapshot_index]
        self._commit_index = max(self._commit_index, snapshot_index)

    def reset(self, base: Configuration, base_index: int, commit_index: int) -> None:
        """Everything from a snapshot (the log kept nothing after it)."""
        self._base, self._base_index = base, base_index
        self._entries = []
        self._commit_index = commit_index

    # -- views

    @property
    def latest(self) -> Configuration:
        return self._entries[-1][1] if self._entries else self._base

    @property
    def latest_index(self) -> int:
        return self._entries[-1][0] if self._entries else self._base_index

    def as_of(self, index: int) -> tuple[Configuration, int]:
        """The configuration in force at log index ``index`` and where it was written."""
        for entry_index, configuration in reversed(self._entries):
            if entry_index <= index:
                return configuration, entry_index
        return self._base, self._base_index

    @property
    def committed(self) -> Configuration:
        return self.as_of(self._commit_index)[0]

    @property
    def committed_index(self) -> int:
        return self.as_of(self._commit_index)[1]

    @property
    def stable(self) -> bool:
        """The latest configuration is committed (a leader may change membership)."""
        return self.latest_index <= self._commit_index or not self._entries
