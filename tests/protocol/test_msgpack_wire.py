"""The shared msgpack plumbing: limits surface as ObjectTooLarge, everything else a hostile
peer sends as Undecodable, by exception type and never by msgpack's texts."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, strategies as st

from agentrpc.protocol.msgpack_wire import (
    NEED_DATA,
    ObjectTooLarge,
    Undecodable,
    bounded_unpacker,
    feed,
    next_object,
)

LIMIT = 1024


def first(data: bytes) -> object:
    unpacker = bounded_unpacker(LIMIT)
    feed(unpacker, data)
    return next_object(unpacker)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xdd" + (10**8).to_bytes(4, "big"), id="array-declares-100M"),
        pytest.param(b"\xdf" + (10**8).to_bytes(4, "big"), id="map-declares-100M"),
        pytest.param(b"\xda\x08\x00" + b"x" * 2048, id="str-over-the-limit"),
        pytest.param(b"\xc5\x08\x00" + b"x" * 2048, id="bin-over-the-limit"),
    ],
)
def test_declared_lengths_over_the_limit_are_object_too_large(data: bytes) -> None:
    with pytest.raises(ObjectTooLarge):
        first(data)


def test_a_full_buffer_is_object_too_large_at_feed() -> None:
    unpacker = bounded_unpacker(LIMIT)
    feed(unpacker, b"\xdb" + (10**8).to_bytes(4, "big"))  # a 100 MB str, still arriving
    assert next_object(unpacker) is NEED_DATA
    with pytest.raises(ObjectTooLarge):
        for _ in range(100):
            feed(unpacker, b"x" * 4096)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xc1", id="reserved-byte"),
        pytest.param(b"\x91" * 5000 + b"\x01", id="deep-nesting"),
        pytest.param(b"\x81\x91\x01\x02", id="unhashable-key"),
    ],
)
def test_hostile_bytes_are_undecodable(data: bytes) -> None:
    with pytest.raises(Undecodable):
        first(data)


def test_non_str_map_keys_are_values_for_the_caller_to_check() -> None:
    assert first(b"\x81\x01\x02") == {1: 2}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xd5\xff\x00\x01", id="bad-timestamp"),
        pytest.param(b"\xd4\x05\x00", id="fixext1"),
        pytest.param(b"\xc7\x01\x05\x00", id="ext8"),
    ],
)
def test_ext_types_are_refused_by_their_zero_length_limit(data: bytes) -> None:
    # No Go agent sends ext types; refusing them by length means msgpack never gets to parse
    # a timestamp (whose own ValueError would look like a limit).
    with pytest.raises(ObjectTooLarge, match="max_ext_len"):
        first(data)


@given(st.binary(max_size=64))
def test_any_bytes_give_an_object_need_data_or_a_typed_error(data: bytes) -> None:
    with contextlib.suppress(ObjectTooLarge, Undecodable):
        first(data)
