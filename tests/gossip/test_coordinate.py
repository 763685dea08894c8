"""Serf's Vivaldi coordinates: the client's rules, the ack payload, and the same numbers as
Debian's Go library (github.com/hashicorp/serf/coordinate) for the same observations.

The Go side is ``tests/gossip/go/coordinate_vectors``: it is built in GOPATH mode against
/usr/share/gocode, fed a sequence of observations, and prints its coordinates, distances,
reset count and ack payloads, which ours must match (floats within 1e-9, payload bytes exactly).
"""

from __future__ import annotations

import json
import math
import random
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
from go_programs import build_go_program

from agentrpc.gossip.coordinate import (
    MAX_RTT,
    PING_VERSION,
    Coordinate,
    CoordinateClient,
    CoordinateConfig,
    CoordinateError,
    UnsupportedPingVersion,
    decode_ping_payload,
    encode_ping_payload,
)
from agentrpc.gossip.messages import AckResp, GossipDecodeError, decode_body
from agentrpc.gossip.packet import decode_packet

GO_PROGRAM = Path(__file__).parent / "go" / "coordinate_vectors"
CONFIG = CoordinateConfig()


class FixedRandom:
    """An rng that replays given values (then 0.5, which makes a zero vector)."""

    def __init__(self, *values: float) -> None:
        self._values = iter(values)

    def random(self) -> float:
        return next(self._values, 0.5)


def coord(
    *vec: float, error: float = 1.5, adjustment: float = 0.0, height: float = 1e-5
) -> Coordinate:
    padded = tuple(vec) + (0.0,) * (CONFIG.dimensionality - len(vec))
    return Coordinate(padded, error, adjustment, height)


# --------------------------------------------------------------------------------------------
# Configuration and the coordinate itself.


def test_defaults_are_serfs() -> None:
    # coordinate.DefaultConfig() in serf 0.8 and 0.9.
    expected = CoordinateConfig(
        dimensionality=8,
        vivaldi_error_max=1.5,
        vivaldi_ce=0.25,
        vivaldi_cc=0.25,
        adjustment_window_size=20,
        height_min=10.0e-6,
        latency_filter_size=3,
        gravity_rho=150.0,
    )
    assert expected == CONFIG
    origin = Coordinate.origin()
    assert origin == Coordinate((0.0,) * 8, 1.5, 0.0, 10.0e-6)
    assert CoordinateClient(rng=random.Random(1)).coordinate == origin


@pytest.mark.parametrize(
    "bad",
    [
        {"dimensionality": 0},
        {"latency_filter_size": 0},
        {"adjustment_window_size": -1},
        {"gravity_rho": 0.0},
        {"vivaldi_error_max": math.nan},
        {"height_min": -1.0},
        {"vivaldi_cc": math.inf},
    ],
)
def test_config_refuses_what_the_client_cannot_run_with(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CoordinateConfig(**bad)


def test_distance_is_euclidean_plus_heights_plus_adjustments_in_whole_nanoseconds() -> None:
    a = coord(0.003, 0.004, height=0.001, adjustment=0.0005)
    b = coord(height=0.002, adjustment=-0.0001)
    assert a.raw_distance_to(b) == pytest.approx(0.005 + 0.003)
    assert a.distance_ns(b) == 8_400_000
    assert a.distance_to(b) == 0.0084
    # Adjustments that would make the distance non-positive are left out.
    c = replace(b, adjustment=-1.0)
    assert a.distance_ns(c) == int(a.raw_distance_to(c) * 1e9)
    # Sub-nanosecond parts are cut, as Go's time.Duration does.
    d = coord(1.5e-9, height=0.0)
    assert d.distance_ns(coord(height=0.0)) == 1


def test_validity_and_compatibility() -> None:
    assert coord(1.0).is_valid()
    for broken in (coord(math.nan), coord(error=math.inf), coord(height=-math.inf),
                   coord(adjustment=math.nan)):  # fmt: skip
        assert not broken.is_valid()
    short = Coordinate((0.0, 0.0), 1.5, 0.0, 1e-5)
    assert not coord().is_compatible_with(short)
    with pytest.raises(CoordinateError, match="dimensionality does not match"):
        coord().distance_to(short)
    with pytest.raises(CoordinateError):
        coord().apply_force(CONFIG, 1.0, short, random.Random(1))


def test_apply_force_moves_along_the_line_and_grows_the_height() -> None:
    a, b = coord(0.0, 0.01, height=0.001), coord(height=0.001)
    pushed = a.apply_force(CONFIG, 0.002, b, FixedRandom())
    assert pushed.vec[:2] == pytest.approx((0.0, 0.012))
    # height' = (h + h_other) * force / distance + h
    assert pushed.height == pytest.approx(0.002 * 0.002 / 0.01 + 0.001)
    pulled = a.apply_force(CONFIG, -0.5, b, FixedRandom())
    assert pulled.height == CONFIG.height_min  # never below the minimum


def test_coinciding_coordinates_are_pushed_along_a_random_unit_vector() -> None:
    a = coord(height=0.001)
    rng = FixedRandom(0.75, 0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5)
    pushed = a.apply_force(CONFIG, 0.01, a, rng)
    half = 0.01 / math.sqrt(2)
    assert pushed.vec[:2] == pytest.approx((half, -half))
    assert pushed.vec[2:] == (0.0,) * 6
    assert pushed.height == a.height  # no distance: the height stays
    # A random vector too short to normalise falls back to the first axis.
    fallback = a.apply_force(CONFIG, 0.01, a, FixedRandom())
    assert fallback.vec == (0.01, *(0.0,) * 7)


# --------------------------------------------------------------------------------------------
# The client.


def test_update_refuses_bad_observations_and_changes_nothing() -> None:
    client = CoordinateClient(rng=random.Random(1))
    good = coord(0.01)
    cases: list[tuple[Coordinate, float, str]] = [
        (Coordinate((0.0,) * 3, 1.5, 0.0, 1e-5), 0.01, "dimensions aren't compatible"),
        (coord(math.nan), 0.01, "coordinate is invalid"),
        (coord(error=math.inf), 0.01, "coordinate is invalid"),
        (good, -0.001, "not in valid range"),
        (good, MAX_RTT + 0.001, "not in valid range"),
        (good, math.nan, "not a number"),
        (good, math.inf, "not in valid range"),
        (good, -1e300, "not in valid range"),
    ]
    for other, rtt, message in cases:
        with pytest.raises(CoordinateError, match=message):
            client.update("peer", other, rtt)
    assert client.coordinate == Coordinate.origin()
    assert client.tracked_nodes == 0
    # The bounds themselves are accepted, a zero RTT included (serf 0.9 counts it, no more).
    client.update("peer", good, 0.0)
    client.update("peer", good, MAX_RTT)
    assert client.coordinate.is_valid()


def test_latency_filter_uses_the_median_of_the_last_three() -> None:
    def run(rtts: list[float]) -> Coordinate:
        client = CoordinateClient(rng=random.Random(1))
        for rtt in rtts:
            client.update("peer", coord(0.01), rtt)
        return client.coordinate

    # A spike in the newest sample is ignored: [0.010, 0.011, 0.500] -> median 0.011.
    spiked = run([0.010, 0.011, 0.500])
    steady = run([0.010, 0.011, 0.011])
    assert spiked == steady
    # Samples are per node, and forgetting a node drops its samples.
    client = CoordinateClient(rng=random.Random(1))
    client.update("a", coord(0.01), 0.01)
    client.update("b", coord(0.02), 0.01)
    assert client.tracked_nodes == 2
    client.forget_node("a")
    client.forget_node("unknown")
    assert client.tracked_nodes == 1


def test_an_invalid_result_resets_the_coordinate_and_is_counted() -> None:
    client = CoordinateClient(rng=random.Random(1))
    client.update("peer", coord(0.01), 0.02)
    assert client.coordinate != Coordinate.origin()
    # A far-away (but finite) peer overflows the distance: the adjustment goes infinite.
    client.update("far", coord(1e300), 0.01)
    assert client.coordinate == Coordinate.origin()
    assert client.resets == 1


def test_set_coordinate_checks_what_it_is_given() -> None:
    client = CoordinateClient(rng=random.Random(1))
    client.set_coordinate(coord(0.5))
    assert client.coordinate == coord(0.5)
    assert client.distance_to(coord(0.5)) == 2e-5
    with pytest.raises(CoordinateError):
        client.set_coordinate(coord(math.nan))


# --------------------------------------------------------------------------------------------
# The ack payload.


def serf_origin_payload(capture: Callable[[str], bytes]) -> bytes:
    ((_, body),) = decode_packet(capture("ack_to_our_ping.bin")).messages
    return decode_body(AckResp, body).payload


def test_payload_of_a_new_node_is_byte_for_byte_what_serf_sends(
    capture: Callable[[str], bytes],
) -> None:
    payload = serf_origin_payload(capture)  # captured from a real serf 0.8.2 agent
    assert payload[0] == PING_VERSION
    assert decode_ping_payload(payload) == Coordinate.origin()
    assert encode_ping_payload(Coordinate.origin()) == payload


def test_payload_round_trip_is_exact() -> None:
    rng = random.Random(7)
    for _ in range(50):
        value = Coordinate(
            tuple(rng.uniform(-1, 1) for _ in range(8)),
            rng.random(),
            rng.uniform(-0.01, 0.01),
            rng.random() / 100,
        )
        assert decode_ping_payload(encode_ping_payload(value)) == value


def raw_payload(fields: object, trailing: bytes = b"") -> bytes:
    return bytes((PING_VERSION,)) + msgpack.packb(fields, use_bin_type=False) + trailing


def test_payload_decoding_is_as_lenient_as_gos() -> None:
    # Unknown fields ignored, missing ones zero, integers and float32 taken, trailing bytes
    # ignored.
    decoded = decode_ping_payload(
        raw_payload({"Vec": [1, 2.5], "Error": 1, "Extra": "x"}, trailing=b"\xc0junk")
    )
    assert decoded == Coordinate((1.0, 2.5), 1.0, 0.0, 0.0)
    single = bytes((PING_VERSION,)) + msgpack.packb({"Height": 0.25}, use_single_float=True)
    assert decode_ping_payload(single).height == 0.25
    assert decode_ping_payload(raw_payload(None)) == Coordinate((), 0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x01",  # no coordinate at all
        b"\x01\xc1",  # not msgpack
        raw_payload([1.0, 2.0]),  # not a map
        raw_payload({"Vec": "abc"}),
        raw_payload({"Vec": [1.0, True]}),
        raw_payload({"Error": "1.5"}),
    ],
)
def test_bad_payloads_are_decode_errors(payload: bytes) -> None:
    with pytest.raises(GossipDecodeError):
        decode_ping_payload(payload)


def test_an_unknown_ping_version_is_told_apart() -> None:
    with pytest.raises(UnsupportedPingVersion, match="Unsupported ping version: 2") as info:
        decode_ping_payload(b"\x02" + encode_ping_payload(Coordinate.origin())[1:])
    assert info.value.version == 2


# --------------------------------------------------------------------------------------------
# The same numbers as Go.


def bits(value: float) -> str:
    return struct.pack(">d", value).hex()


def from_bits(text: str) -> float:
    value: float = struct.unpack(">d", bytes.fromhex(text))[0]
    return value


def wire(c: Coordinate) -> dict[str, Any]:
    return {
        "vec": [bits(x) for x in c.vec],
        "error": bits(c.error),
        "adjustment": bits(c.adjustment),
        "height": bits(c.height),
    }


def unwire(w: dict[str, Any]) -> Coordinate:
    return Coordinate(
        tuple(from_bits(x) for x in w["vec"]),
        from_bits(w["error"]),
        from_bits(w["adjustment"]),
        from_bits(w["height"]),
    )


def observations(seed: int, count: int) -> Iterator[tuple[str, Coordinate, int]]:
    """(node, its coordinate, RTT in ns): five peers drifting through a space of tens of ms,
    RTTs from 0 to 10 s, and now and then something the client must refuse or survive."""
    rng = random.Random(seed)
    peers = {f"node{i}": [rng.uniform(-0.05, 0.05) for _ in range(8)] for i in range(5)}
    for step in range(count):
        node = rng.choice(sorted(peers))
        vec = peers[node]
        for index in range(8):
            vec[index] += rng.gauss(0, 0.002)
        other = Coordinate(
            tuple(vec), rng.uniform(0.05, 1.5), rng.uniform(-0.002, 0.002), rng.uniform(1e-5, 0.01)
        )
        rtt_ns = rng.choice(
            [rng.randrange(0, 200_000_000), rng.randrange(0, 2_000_000), rng.randrange(0, 10**10)]
        )
        special = step % 37
        if special == 5:
            other = replace(other, vec=other.vec[:4])
        elif special == 11:
            other = replace(other, height=math.nan)
        elif special == 17:
            rtt_ns = -1
        elif special == 23:
            rtt_ns = 10**10 + 1
        elif special == 29:
            rtt_ns = 10**10
        elif special == 31:
            rtt_ns = 0
        if step in (150, 420):
            # A finite peer too far away: the distance overflows, the adjustment window holds
            # -inf for the next 20 updates, each of which resets (Go's behaviour exactly).
            other = replace(other, vec=(1e300, *other.vec[1:]))
        yield node, other, rtt_ns


def close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def test_same_observations_give_the_same_coordinates_as_serfs_go_client() -> None:
    binary = build_go_program(GO_PROGRAM)
    steps = list(observations(seed=12, count=600))
    own_payloads = [
        encode_ping_payload(Coordinate((0.1 * i, -0.2, 3e-3, 0, 0, 0, 0, 1e-9), 0.5, -1e-4, 2e-5))
        for i in range(3)
    ]
    crafted = [
        raw_payload({"Vec": [1, 2.5], "Error": 1, "Extra": "x"}, trailing=b"\xc0junk"),
        raw_payload({"Height": 0.25}),
        b"\x02" + own_payloads[0][1:],
    ]
    request = {
        "updates": [{"node": n, "other": wire(c), "rtt_ns": rtt} for n, c, rtt in steps],
        "payloads": [p.hex() for p in own_payloads + crafted],
    }
    done = subprocess.run(
        [str(binary)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    go = json.loads(done.stdout)

    ours = CoordinateClient(rng=random.Random(99))
    assert encode_ping_payload(ours.coordinate).hex() == go["initial_payload"]
    accepted = refused = exact = 0
    for (node, other, rtt_ns), theirs in zip(steps, go["updates"], strict=True):
        try:
            mine = ours.update(node, other, rtt_ns / 1e9)
        except CoordinateError:
            assert theirs.get("error"), f"Go accepted what we refused at {node} {rtt_ns}"
            refused += 1
            continue
        assert not theirs.get("error"), f"we accepted what Go refused: {theirs['error']}"
        accepted += 1
        expected = unwire(theirs["coord"])
        pairs = [
            *zip(mine.vec, expected.vec, strict=True),
            (mine.error, expected.error),
            (mine.adjustment, expected.adjustment),
            (mine.height, expected.height),
        ]
        assert all(close(a, b) for a, b in pairs), (mine, expected)
        assert abs(ours.coordinate.distance_ns(other) - theirs["distance_ns"]) <= 1
        if mine == expected:
            exact += 1
            assert encode_ping_payload(mine).hex() == theirs["payload"]
    assert ours.resets == go["resets"] > 0
    assert ours.resets < accepted // 4  # most observations were real ones
    assert refused >= 4 * (len(steps) // 37) and accepted > len(steps) // 2
    print(f"{accepted} accepted, {refused} refused, {exact} bit-exact, {ours.resets} resets")
    assert exact == accepted  # same operations in the same order: the same bits

    # Decoding: Go reads our payloads as we do, and the crafted ones alike.
    for payload, theirs in zip(own_payloads + crafted, go["decoded"], strict=True):
        try:
            mine = decode_ping_payload(payload)
        except UnsupportedPingVersion as exc:
            assert theirs["error"] == str(exc)
            continue
        assert not theirs.get("error"), theirs
        assert unwire(theirs["coord"]) == mine
