"""Membership as hashicorp/raft 1.1.2 keeps it: checks with Go's exact texts, the change rules,
the encodings, and the latest/committed tracking; and the small KV state machine."""

from __future__ import annotations

import io

import msgpack
import pytest
from hypothesis import given, strategies as st

from agentrpc.raft.configuration import (
    ChangeCommand,
    Configuration,
    ConfigurationChange,
    ConfigurationError,
    Configurations,
    Server,
    Suffrage,
    check_configuration,
    decode_configuration,
    decode_peers,
    encode_configuration,
    encode_peers,
    next_configuration,
)
from agentrpc.raft.fsm import apply_entry
from agentrpc.raft.gomsgpack import DecodeError
from agentrpc.raft.kv_fsm import (
    InvalidCommand,
    KVStateMachine,
    cas_command,
    delete_command,
    get_command,
    set_command,
)
from agentrpc.raft.log import LogEntry, LogType

A = Server("a", "10.0.0.1:8300")
B = Server("b", "10.0.0.2:8300")
C = Server("c", "10.0.0.3:8300", Suffrage.NONVOTER)


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        ((Server("", "x"),), "Empty ID in configuration: {[{Voter  x}]}"),
        ((Server("a", ""),), "Empty address in configuration: {Voter a }"),
        ((A, Server("a", "y")), "Found duplicate ID in configuration: a"),
        ((A, Server("z", A.address)), "Found duplicate address in configuration: 10.0.0.1:8300"),
        ((C,), "Need at least one voter in configuration: {[{Nonvoter c 10.0.0.3:8300}]}"),
        ((), "Need at least one voter in configuration: {[]}"),
        (
            (Server("s", "x", 7),),
            "Need at least one voter in configuration: {[{ServerSuffrage s x}]}",
        ),
    ],
)
def test_check_configuration_texts_are_gos(servers: tuple[Server, ...], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        check_configuration(Configuration(servers))
    assert str(info.value) == message


def change(command: ChangeCommand, server_id: str, address: str = "", prev: int = 0) -> object:
    return ConfigurationChange(command, server_id, address, prev)


def test_next_configuration_follows_go() -> None:
    base = Configuration((A, C))
    # AddStaging adds a voter at once (1.1.2 never promotes); a voter only changes address.
    added = next_configuration(base, 1, change(ChangeCommand.ADD_STAGING, "b", B.address))
    assert added.servers == (A, C, B)
    moved = next_configuration(added, 2, change(ChangeCommand.ADD_STAGING, "a", "new:1"))
    assert moved.servers[0] == Server("a", "new:1", Suffrage.VOTER)
    promoted = next_configuration(base, 1, change(ChangeCommand.ADD_STAGING, "c", C.address))
    assert promoted.server("c") == Server("c", C.address, Suffrage.VOTER)
    # AddNonvoter never demotes.
    kept = next_configuration(base, 1, change(ChangeCommand.ADD_NONVOTER, "a", "x:1"))
    assert kept.server("a") == Server("a", "x:1", Suffrage.VOTER)
    demoted = next_configuration(added, 2, change(ChangeCommand.DEMOTE_VOTER, "b"))
    assert demoted.server("b") == Server("b", B.address, Suffrage.NONVOTER)
    removed = next_configuration(added, 2, change(ChangeCommand.REMOVE_SERVER, "c"))
    assert removed.servers == (A, B)
    assert next_configuration(base, 1, change(ChangeCommand.REMOVE_SERVER, "zz")) == base
    with pytest.raises(
        ConfigurationError, match=r"^Configuration changed since 4 \(latest is 5\)$"
    ):
        next_configuration(base, 5, change(ChangeCommand.REMOVE_SERVER, "c", prev=4))
    with pytest.raises(ConfigurationError, match="Need at least one voter"):
        next_configuration(base, 1, change(ChangeCommand.REMOVE_SERVER, "a"))


def test_quorum_and_go_renderings() -> None:
    three = Configuration((A, B, Server("d", "x", Suffrage.VOTER), C))
    assert three.quorum_size() == 2 and [s.id for s in three.voters()] == ["a", "b", "d"]
    assert Configuration((A, B)).quorum_size() == 2
    assert Configuration((A, C)).go_servers() == (
        "[{Suffrage:Voter ID:a Address:10.0.0.1:8300} "
        "{Suffrage:Nonvoter ID:c Address:10.0.0.3:8300}]"
    )


servers = st.lists(
    st.builds(Server, id=st.text(min_size=1, max_size=40), address=st.text(min_size=1, max_size=40),
              suffrage=st.integers(0, 2)),
    max_size=6,
)  # fmt: skip


@given(servers)
def test_encodings_round_trip(listed: list[Server]) -> None:
    configuration = Configuration(tuple(listed))
    assert decode_configuration(encode_configuration(configuration)) == configuration
    voters = Configuration(tuple(Server(s.address, s.address) for s in configuration.voters()))
    assert decode_peers(encode_peers(configuration)) == voters


def test_bad_configuration_bytes_are_decode_errors() -> None:
    for data in (b"", b"\x81", b"\x81\xa7Servers\x05", b"\x92\x01\x02", b"\x80\x80"):
        with pytest.raises(DecodeError):
            decode_configuration(data)
    with pytest.raises(DecodeError):
        decode_peers(b"\x91\x05")


def test_latest_and_committed_tracking() -> None:
    one, two, three = Configuration((A,)), Configuration((A, B)), Configuration((A, B, C))
    configs = Configurations()
    configs.appended(1, one)
    assert (configs.latest_index, configs.committed_index, configs.stable) == (1, 0, False)
    configs.committed_through(1)
    assert configs.committed == one and configs.stable
    configs.appended(5, two)  # latest at once, before it commits
    assert configs.latest == two and configs.committed == one and not configs.stable
    configs.truncated(5)  # the uncommitted entry is removed: back to the committed one
    assert configs.latest == one and configs.latest_index == 1
    configs.appended(6, two)
    configs.appended(9, three)
    configs.committed_through(7)
    assert configs.committed == two and configs.as_of(8) == (two, 6)
    configs.compacted(7, two, 6)  # a snapshot through 7 (its configuration written at 6)
    assert configs.latest == three and configs.as_of(7) == (two, 6)
    configs.reset(one, 20, 20)
    assert configs.latest == configs.committed == one and configs.stable


def test_kv_state_machine() -> None:
    fsm = KVStateMachine()

    def run(index: int, data: bytes) -> object:
        return apply_entry(fsm, LogEntry(index, 1, LogType.COMMAND, data))

    assert run(1, get_command("k")) is None
    assert run(2, cas_command("k", None, "a")) is True
    assert run(3, cas_command("k", None, "b")) is False
    assert run(4, get_command("k")) == "a"
    assert run(5, set_command("k", "c")) is None
    assert run(6, cas_command("k", "c", "d")) is True
    assert run(7, delete_command("k")) is None
    assert run(8, get_command("k")) is None
    assert isinstance(run(9, b"\xc1garbage"), InvalidCommand)
    assert isinstance(run(10, msgpack.packb(["set", "k", 5])), InvalidCommand)
    assert fsm.applied == 10
    # Entries that are not commands never reach the machine.
    assert apply_entry(fsm, LogEntry(11, 1, LogType.NOOP)) is None
    assert apply_entry(fsm, LogEntry(12, 1, LogType.BARRIER, set_command("k", "no"))) is None
    assert fsm.applied == 10 and "k" not in fsm.data
    run(13, set_command("x", "1"))
    snapshot = fsm.snapshot()
    sink = io.BytesIO()
    snapshot.persist(sink)
    snapshot.release()
    copy = KVStateMachine()
    copy.restore(io.BytesIO(sink.getvalue()))
    assert copy.data == {"x": "1"}
