"""Request bodies decode like the reference's Go structs: map or positional array."""

from __future__ import annotations

import ipaddress

import pytest

from agentrpc.protocol.bodies import (
    JoinRequest,
    Member,
    decode_force_leave,
    decode_handshake,
    decode_join,
    decode_monitor,
    decode_stop,
    members_body,
)
from agentrpc.protocol.errors import ProtocolError


def test_struct_as_map_or_array() -> None:
    assert decode_handshake({"Version": 1}) == 1
    assert decode_handshake([1]) == 1
    assert decode_handshake({}) == 0
    assert decode_handshake({"Version": None, "Extra": "ignored"}) == 0
    assert decode_join({"Existing": ["a:1"], "WAN": True}) == JoinRequest(["a:1"], True)
    assert decode_join([["a:1", "b:2"], False]) == JoinRequest(["a:1", "b:2"], False)
    assert decode_join({}) == JoinRequest([], False)
    assert decode_force_leave({"Node": "n2"}) == "n2"
    assert decode_monitor(["debug"]) == "debug"
    assert decode_stop({"Stop": 12}) == 12


def test_keys_are_case_sensitive() -> None:
    assert decode_handshake({"version": 1}) == 0
    assert decode_force_leave({"node": "x"}) == ""


@pytest.mark.parametrize(
    ("decoder", "body"),
    [
        (decode_handshake, "1"),
        (decode_handshake, {"Version": "1"}),
        (decode_handshake, {"Version": True}),
        (decode_join, {"Existing": "a:1"}),
        (decode_join, {"Existing": [1]}),
        (decode_join, {"WAN": 1}),
        (decode_force_leave, {"Node": 5}),
        (decode_monitor, {"LogLevel": 5}),
        (decode_monitor, {"LogLevel": ["debug"]}),
        (decode_stop, {"Stop": "5"}),
        (decode_stop, None),
    ],
)
def test_wrong_types_are_protocol_errors(decoder: object, body: object) -> None:
    with pytest.raises(ProtocolError):
        decoder(body)  # type: ignore[operator]


def test_member_wire_form() -> None:
    member = Member("n1", ipaddress.ip_address("10.1.2.3"), 8301, {"role": "consul"})
    wire = member.to_wire()
    assert wire["Addr"] == b"\x0a\x01\x02\x03"
    assert set(wire) == {
        "Name", "Addr", "Port", "Tags", "Status", "ProtocolMin", "ProtocolMax", "ProtocolCur",
        "DelegateMin", "DelegateMax", "DelegateCur",
    }  # fmt: skip
    assert Member.from_wire(wire) == member
    v6 = Member("n6", ipaddress.ip_address("::1"), 1, {})
    assert len(v6.to_wire()["Addr"]) == 16
    assert v6.address == "[::1]:1"
    assert members_body([]) == {"Members": []}


def test_member_from_wire_rejects_bad_addresses() -> None:
    with pytest.raises(ProtocolError):
        Member.from_wire({"Name": "x", "Addr": b"\x01\x02"})


def test_bin_and_non_utf8_strings_are_accepted_as_go_does() -> None:
    # Go decodes a bin (or a raw str) into a string field; bytes that are not UTF-8 keep
    # their value through surrogateescape.
    assert decode_monitor({"LogLevel": b"debug"}) == "debug"
    assert decode_force_leave({"Node": b"\xffnode\xfe"}) == "\udcffnode\udcfe"
    assert decode_force_leave(["caf\xc3\xa9".encode("latin-1")]) == "caf\xe9"
    assert decode_join({"Existing": [b"a:1", "b:2"]}) == JoinRequest(["a:1", "b:2"], False)
    assert decode_force_leave({"Node": b"\xff"}).encode("utf-8", "surrogateescape") == b"\xff"


def test_member_from_a_go_encoder() -> None:
    # Name as bin, Addr as a raw str (go-msgpack's default handle), tags not UTF-8.
    wire = {
        "Name": b"n\xff",
        "Addr": "\n\x01\x02\x03",
        "Port": 8301,
        "Tags": {b"role": b"web\xfe"},
        "Status": b"alive",
    }
    member = Member.from_wire(wire)
    assert member.name == "n\udcff"
    assert member.addr == ipaddress.ip_address("10.1.2.3")
    assert member.tags == {"role": "web\udcfe"}
    assert member.status == "alive"
    with pytest.raises(ProtocolError, match="member Name must hold strings"):
        Member.from_wire({"Name": 5, "Addr": b"\x01\x02\x03\x04"})
    with pytest.raises(ProtocolError, match="member Tags must hold strings"):
        Member.from_wire({"Addr": b"\x01\x02\x03\x04", "Tags": {"a": 1}})
