"""Serf's network coordinates: the Vivaldi client and the ping payload that carries them.

Every serf node keeps an estimate of where it sits in a virtual space whose distances are round
trip times (hashicorp/serf's ``coordinate`` package: Vivaldi, Dabek et al. 2004, with the height
and adjustment terms and the gravity of Ledlie et al. 2007). Each completed direct probe gives
one observation: the peer's coordinate (which rode back in the ack) and the measured RTT; the
client moves its own coordinate so that the distance between the two drifts towards the RTT.
Any two nodes' coordinates then estimate the RTT between them without a ping (``serf rtt``).

* :class:`Coordinate` is the value that travels: ``Vec`` (8 dimensions), ``Error`` (the
  confidence, dimensionless), ``Adjustment`` and ``Height`` (seconds). It is immutable; every
  operation returns a new one.
* :class:`CoordinateClient` is serf's ``coordinate.Client``: the local coordinate, the latency
  filter (moving median of the last :attr:`CoordinateConfig.latency_filter_size` RTTs per node),
  the adjustment window, gravity, and the reset to the origin if a computation ever produced a
  NaN or an infinity.
* :func:`encode_ping_payload` / :func:`decode_ping_payload` are the bytes serf puts in a
  memberlist ack: :data:`PING_VERSION` (one byte), then the msgpack map of the coordinate with
  Go's sorted field names (``Adjustment``, ``Error``, ``Height``, ``Vec``), every number a
  float64, exactly as serf 0.8 and 0.9 send it.

The arithmetic follows the Go client step for step, so that the same observations give the same
coordinates to the last few ulps (checked against the Go library by
``tests/gossip/test_coordinate.py``). That includes Go's ``time.Duration`` round trip: distances
are truncated to whole nanoseconds before they are used, and RTTs are taken as whole
nanoseconds (the nearest one to the float seconds given). A float too large for an ``int64`` of
nanoseconds becomes the smallest ``int64``, as Go's conversion does on amd64.

Randomness is the caller's: when two coordinates coincide, the force between them acts along a
random unit vector drawn from the ``rng`` given to the client (anything with ``random()``).

Resources: a client keeps one short list of RTTs per node it has heard from; nothing bounds the
number of nodes here (as in Go, the owner calls :meth:`CoordinateClient.forget_node`; the serf
layer's :class:`~agentrpc.gossip.serf_coordinates.SerfCoordinates` keeps it to its bound).

Errors: :class:`CoordinateError` (a ``ValueError``) for an observation the client refuses
(incompatible dimensions, NaN or infinite components, an RTT outside 0..10 s) and for operations
on coordinates of different dimensions; :func:`decode_ping_payload` raises
:class:`~agentrpc.gossip.messages.GossipDecodeError` (:class:`UnsupportedPingVersion` for a
version byte other than 1). Nothing here logs or touches I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from agentrpc.gossip.messages import GossipDecodeError, pack_wire, unpack_wire_map

__all__ = [
    "MAX_RTT",
    "PING_VERSION",
    "ZERO_THRESHOLD",
    "Coordinate",
    "CoordinateClient",
    "CoordinateConfig",
    "CoordinateError",
    "RandomSource",
    "UnsupportedPingVersion",
    "decode_ping_payload",
    "encode_ping_payload",
]

PING_VERSION: Final = 1
"""The first byte of serf's ack payload (serf's ``PingVersion``)."""
MAX_RTT: Final = 10.0
"""Longest RTT (seconds) an observation may report (the Go client's ``maxRTT``)."""
ZERO_THRESHOLD: Final = 1.0e-6
"""Below this, distances and errors count as zero (the Go package's ``zeroThreshold``)."""

_NS_PER_SECOND: Final = 1_000_000_000
_SECONDS_TO_NANOSECONDS: Final = 1.0e9
_INT64_MIN: Final = -(1 << 63)
_INT64_LIMIT: Final = 9.223372036854775808e18  # 2**63 as a float
_MAX_RTT_NS: Final = int(MAX_RTT * _NS_PER_SECOND)
_WHAT: Final = "coordinate"


class CoordinateError(ValueError):
    """An observation the client refuses, or coordinates that cannot be combined."""


class UnsupportedPingVersion(GossipDecodeError):
    """An ack payload whose version byte is not :data:`PING_VERSION`."""

    def __init__(self, version: int) -> None:
        super().__init__(f"Unsupported ping version: {version}")
        self.version = version


class RandomSource(Protocol):
    """Where random unit vectors come from (``random.Random`` fits)."""

    def random(self) -> float:
        """A float in [0, 1)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class CoordinateConfig:
    """The tuning of the Vivaldi client (serf's ``coordinate.DefaultConfig``)."""

    dimensionality: int = 8
    """Euclidean dimensions (plus the non-Euclidean height)."""
    vivaldi_error_max: float = 1.5
    """The error of a node that has observed nothing yet, and the error's upper bound."""
    vivaldi_ce: float = 0.25
    """How much one observation may change the error."""
    vivaldi_cc: float = 0.25
    """How much one observation may move the coordinate."""
    adjustment_window_size: int = 20
    """Samples kept for the adjustment term; 0 turns it off."""
    height_min: float = 10.0e-6
    """The smallest height (seconds)."""
    latency_filter_size: int = 3
    """RTT samples kept per node; their median is the RTT used."""
    gravity_rho: float = 150.0
    """How weakly gravity pulls coordinates back to the origin (larger: weaker)."""

    def __post_init__(self) -> None:
        if self.dimensionality < 1:
            raise ValueError("dimensionality must be >0")
        if self.latency_filter_size < 1:
            raise ValueError("latency_filter_size must be at least 1")
        if self.adjustment_window_size < 0:
            raise ValueError("adjustment_window_size must not be negative")
        for name in ("vivaldi_error_max", "gravity_rho"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("vivaldi_ce", "vivaldi_cc", "height_min"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")


# --------------------------------------------------------------------------------------------
# Go's time.Duration round trip and the vector helpers.


def _duration_ns(seconds: float) -> int:
    """``time.Duration(seconds * 1e9)``: truncated towards zero; out of range (or NaN) gives
    the smallest int64, as Go's float-to-int conversion does on amd64."""
    ns = seconds * _SECONDS_TO_NANOSECONDS
    if not -_INT64_LIMIT <= ns < _INT64_LIMIT:
        return _INT64_MIN
    return int(ns)


def _ns_seconds(ns: int) -> float:
    """``time.Duration(ns).Seconds()``: whole seconds plus the remainder, Go's way."""
    whole, rest = divmod(abs(ns), _NS_PER_SECOND)
    if ns < 0:
        whole, rest = -whole, -rest
    return float(whole) + float(rest) / 1e9


def _magnitude(vec: Sequence[float]) -> float:
    total = 0.0
    for component in vec:
        total += component * component
    return math.sqrt(total)


def _diff(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def _unit_vector_at(
    a: Sequence[float], b: Sequence[float], rng: RandomSource
) -> tuple[list[float], float]:
    """A unit vector pointing at ``a`` from ``b`` and their distance; where they coincide, a
    random unit vector (along the first axis if even that comes out too short) and 0."""
    ret = _diff(a, b)
    mag = _magnitude(ret)
    if mag > ZERO_THRESHOLD:
        scale = 1.0 / mag
        return [x * scale for x in ret], mag
    ret = [rng.random() - 0.5 for _ in ret]
    mag = _magnitude(ret)
    if mag > ZERO_THRESHOLD:
        scale = 1.0 / mag
        return [x * scale for x in ret], 0.0
    ret = [0.0] * len(ret)
    ret[0] = 1.0
    return ret, 0.0


def _finite(value: float) -> bool:
    return not (math.isinf(value) or math.isnan(value))


# --------------------------------------------------------------------------------------------
# The coordinate.


@dataclass(frozen=True, slots=True)
class Coordinate:
    """A point in the Vivaldi space; every length is in seconds."""

    vec: tuple[float, ...]
    """The Euclidean part."""
    error: float
    """Confidence in the coordinate (dimensionless; lower is better)."""
    adjustment: float
    """A per-node offset learned from the recent observations."""
    height: float
    """The non-Euclidean offset of the node's access link."""

    @classmethod
    def origin(cls, config: CoordinateConfig | None = None) -> Coordinate:
        """A new node's coordinate: the origin, with the maximum error and the minimum
        height (serf's ``NewCoordinate``)."""
        config = config if config is not None else CoordinateConfig()
        return cls((0.0,) * config.dimensionality, config.vivaldi_error_max, 0.0, config.height_min)

    def is_valid(self) -> bool:
        """False if any component is NaN or infinite."""
        return (
            all(_finite(x) for x in self.vec)
            and _finite(self.error)
            and _finite(self.adjustment)
            and _finite(self.height)
        )

    def is_compatible_with(self, other: Coordinate) -> bool:
        """Whether both have the same dimensions (so that they can be combined)."""
        return len(self.vec) == len(other.vec)

    def _check_compatible(self, other: Coordinate) -> None:
        if len(self.vec) != len(other.vec):
            raise CoordinateError("coordinate dimensionality does not match")

    def raw_distance_to(self, other: Coordinate) -> float:
        """The Vivaldi distance (seconds): Euclidean plus both heights, no adjustments."""
        self._check_compatible(other)
        return _magnitude(_diff(self.vec, other.vec)) + self.height + other.height

    def distance_ns(self, other: Coordinate) -> int:
        """The estimated RTT to ``other`` in whole nanoseconds (serf's ``DistanceTo``): the
        raw distance plus both adjustments, unless that would not be positive."""
        dist = self.raw_distance_to(other)
        adjusted = dist + self.adjustment + other.adjustment
        if adjusted > 0.0:
            dist = adjusted
        return _duration_ns(dist)

    def distance_to(self, other: Coordinate) -> float:
        """The estimated RTT to ``other`` in seconds (whole nanoseconds, as Go returns it)."""
        return _ns_seconds(self.distance_ns(other))

    def apply_force(
        self, config: CoordinateConfig, force: float, other: Coordinate, rng: RandomSource
    ) -> Coordinate:
        """Move by ``force`` (seconds) away from ``other`` (towards it when negative); the
        height follows when the two do not coincide, never below ``config.height_min``."""
        self._check_compatible(other)
        unit, mag = _unit_vector_at(self.vec, other.vec, rng)
        vec = tuple(x + u * force for x, u in zip(self.vec, unit, strict=True))
        height = self.height
        if mag > ZERO_THRESHOLD:
            height = (height + other.height) * force / mag + height
            height = max(height, config.height_min)
        return Coordinate(vec, self.error, self.adjustment, height)


# --------------------------------------------------------------------------------------------
# The client.


class CoordinateClient:
    """The local node's coordinate and what it learns from observations (serf's
    ``coordinate.Client``); see the module docstring."""

    __slots__ = (
        "_adjustment_index",
        "_adjustment_samples",
        "_config",
        "_coord",
        "_latency_samples",
        "_origin",
        "_resets",
        "_rng",
    )

    def __init__(self, config: CoordinateConfig | None = None, *, rng: RandomSource) -> None:
        self._config = config if config is not None else CoordinateConfig()
        self._rng = rng
        self._coord = Coordinate.origin(self._config)
        self._origin = self._coord
        self._adjustment_index = 0
        self._adjustment_samples = [0.0] * self._config.adjustment_window_size
        self._latency_samples: dict[str, list[float]] = {}
        self._resets = 0

    @property
    def config(self) -> CoordinateConfig:
        return self._config

    @property
    def coordinate(self) -> Coordinate:
        """The current estimate of our coordinate."""
        return self._coord

    @property
    def resets(self) -> int:
        """How often a computation went invalid and the coordinate was reset to the origin
        (serf's ``coordinate_resets`` stat)."""
        return self._resets

    @property
    def tracked_nodes(self) -> int:
        """Nodes whose recent RTTs are kept for the latency filter."""
        return len(self._latency_samples)

    def set_coordinate(self, coord: Coordinate) -> None:
        """Force our coordinate (``CoordinateError`` if it is invalid or incompatible)."""
        self._check(coord)
        self._coord = coord

    def forget_node(self, node: str) -> None:
        """Drop what is kept about ``node`` (its RTT samples)."""
        self._latency_samples.pop(node, None)

    def distance_to(self, other: Coordinate) -> float:
        """The estimated RTT (seconds) from us to ``other``."""
        return self._coord.distance_to(other)

    def _check(self, coord: Coordinate) -> None:
        if not self._coord.is_compatible_with(coord):
            raise CoordinateError("dimensions aren't compatible")
        if not coord.is_valid():
            raise CoordinateError("coordinate is invalid")

    def update(self, node: str, other: Coordinate, rtt: float) -> Coordinate:
        """Take in one observation: ``node``'s coordinate ``other`` and the RTT (seconds) of a
        direct probe to it; returns our new coordinate. ``CoordinateError`` (and no change)
        for an incompatible or invalid coordinate or an RTT outside 0..:data:`MAX_RTT`."""
        self._check(other)
        if math.isnan(rtt):
            raise CoordinateError("round trip time is not a number")
        # Whole nanoseconds, as Go's time.Duration (far out of range needs no rounding).
        if abs(rtt) <= 2 * MAX_RTT:
            rtt_ns = round(rtt * _SECONDS_TO_NANOSECONDS)
        else:
            rtt_ns = -1 if rtt < 0 else _MAX_RTT_NS + 1
        if rtt_ns < 0 or rtt_ns > _MAX_RTT_NS:
            raise CoordinateError(
                f"round trip time not in valid range, duration {rtt!r}s is not a positive "
                f"value less than {MAX_RTT:g}s"
            )
        rtt_seconds = self._latency_filter(node, _ns_seconds(rtt_ns))
        self._update_vivaldi(other, rtt_seconds)
        self._update_adjustment(other, rtt_seconds)
        self._update_gravity()
        if not self._coord.is_valid():
            self._resets += 1
            self._coord = Coordinate.origin(self._config)
        return self._coord

    def _latency_filter(self, node: str, rtt_seconds: float) -> float:
        """The median of ``node``'s last few RTTs, this one included."""
        samples = self._latency_samples.get(node)
        if samples is None:
            samples = self._latency_samples[node] = []
        samples.append(rtt_seconds)
        if len(samples) > self._config.latency_filter_size:
            del samples[0]
        ordered = sorted(samples)
        return ordered[len(ordered) // 2]

    def _update_vivaldi(self, other: Coordinate, rtt_seconds: float) -> None:
        config, coord = self._config, self._coord
        dist = _ns_seconds(coord.distance_ns(other))
        rtt_seconds = max(rtt_seconds, ZERO_THRESHOLD)
        wrongness = abs(dist - rtt_seconds) / rtt_seconds
        total_error = coord.error + other.error
        if total_error < ZERO_THRESHOLD:
            total_error = ZERO_THRESHOLD
        weight = coord.error / total_error
        error = config.vivaldi_ce * weight * wrongness + coord.error * (
            1.0 - config.vivaldi_ce * weight
        )
        if error > config.vivaldi_error_max:
            error = config.vivaldi_error_max
        force = config.vivaldi_cc * weight * (rtt_seconds - dist)
        moved = Coordinate(coord.vec, error, coord.adjustment, coord.height)
        self._coord = moved.apply_force(config, force, other, self._rng)

    def _update_adjustment(self, other: Coordinate, rtt_seconds: float) -> None:
        window = self._config.adjustment_window_size
        if window == 0:
            return
        coord = self._coord
        self._adjustment_samples[self._adjustment_index] = rtt_seconds - coord.raw_distance_to(
            other
        )
        self._adjustment_index = (self._adjustment_index + 1) % window
        total = 0.0
        for sample in self._adjustment_samples:
            total += sample
        self._coord = Coordinate(coord.vec, coord.error, total / (2.0 * window), coord.height)

    def _update_gravity(self) -> None:
        config = self._config
        dist = _ns_seconds(self._origin.distance_ns(self._coord))
        force = -1.0 * (dist / config.gravity_rho) ** 2
        self._coord = self._coord.apply_force(config, force, self._origin, self._rng)


# --------------------------------------------------------------------------------------------
# The ack payload.


def encode_ping_payload(coord: Coordinate) -> bytes:
    """What serf puts in an ack: :data:`PING_VERSION`, then the msgpack coordinate."""
    return bytes((PING_VERSION,)) + pack_wire(
        {
            "Adjustment": float(coord.adjustment),
            "Error": float(coord.error),
            "Height": float(coord.height),
            "Vec": [float(x) for x in coord.vec],
        }
    )


def decode_ping_payload(payload: bytes) -> Coordinate:
    """The coordinate in a non-empty ack payload. As Go's decoder: unknown fields are ignored,
    missing or nil ones are zero, integers are taken as floats, trailing bytes are ignored;
    :class:`UnsupportedPingVersion` or :class:`GossipDecodeError` otherwise."""
    if not payload:
        raise GossipDecodeError("empty ping payload")
    if payload[0] != PING_VERSION:
        raise UnsupportedPingVersion(payload[0])
    fields = unpack_wire_map(memoryview(payload)[1:], _WHAT)
    vec_field = fields.get("Vec")
    if vec_field is None:
        vec: tuple[float, ...] = ()
    elif isinstance(vec_field, list):
        vec = tuple(_number(item, "Vec") for item in vec_field)
    else:
        raise GossipDecodeError(f"{_WHAT}.Vec: expected an array of numbers")
    return Coordinate(
        vec,
        _field_number(fields, "Error"),
        _field_number(fields, "Adjustment"),
        _field_number(fields, "Height"),
    )


def _field_number(fields: Mapping[str, object], name: str) -> float:
    value = fields.get(name)
    return 0.0 if value is None else _number(value, name)


def _number(value: object, name: str) -> float:
    if isinstance(value, float):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise GossipDecodeError(f"{_WHAT}.{name}: expected a number, got {type(value).__name__}")
