"""Mutation fuzzing of every decoder that reads bytes from the network.

    .venv/bin/python scripts/fuzz_decoders.py --count 1000000          # the long run
    .venv/bin/python scripts/fuzz_decoders.py --count 20000 --seed 1   # what CI runs (a test)

Targets: the agent RPC request decoder (server side), the response decoder (client side), the
memberlist UDP packet pipeline (with message decoding), and the memberlist TCP stream reader.
Inputs are mutations of real frames (bit flips, byte changes, truncation, splicing, inserted
runs, boundary integers in length fields) fed in random slices. A decoder may only fail with
its documented error (``ProtocolError`` / ``GossipError``); anything else is a crash: the input
is written to ``--crash-dir`` and counted. The exit status is 1 when anything crashed.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack

from agentrpc.gossip.messages import GossipError, decode_message
from agentrpc.gossip.packet import decode_packet
from agentrpc.gossip.security import Keyring
from agentrpc.gossip.stream import StreamReader
from agentrpc.protocol.codec import RequestDecoder, ResponseDecoder
from agentrpc.protocol.errors import ProtocolError

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "tests" / "gossip" / "data"
KEYRING = Keyring(bytes(range(16)))


def rpc_request_seeds() -> list[bytes]:
    pack = msgpack.packb
    return [
        pack({"Command": "handshake", "Seq": 1, "Token": ""}) + pack({"Version": 1}),
        pack({"Command": "members-lan", "Seq": 2, "Token": ""}),
        pack({"Command": "join", "Seq": 3, "Token": "t"}) + pack({"Existing": ["a:1"], "WAN": 1}),
        pack(["monitor", 4, ""]) + pack({"LogLevel": "debug"}),
        pack({"Command": "stop", "Seq": 5}) + pack({"Stop": 4}),
        pack({"Command": "force-leave", "Seq": 2**64 - 1}) + pack(["node"]),
    ]


def rpc_response_seeds() -> list[bytes]:
    pack = msgpack.packb
    member = {"Name": "n", "Addr": b"\x7f\0\0\1", "Port": 1, "Tags": {"a": "b"}, "Status": "alive"}
    return [
        pack({"Error": "", "Seq": 1}),
        pack({"Error": "", "Seq": 2}) + pack({"Members": [member]}),
        pack({"Error": "", "Seq": 3}) + pack({"Log": "line"}),
    ]


def gossip_packet_seeds() -> list[bytes]:
    seeds: list[bytes] = []
    for name in ("udp_packets.bin", "encrypted_udp_packets.bin"):
        path = CAPTURES / name
        if path.exists():
            seeds.extend(_split_length_prefixed(path.read_bytes()))
    seeds.append(b"\x07\x02\x00\x03\x00\x03\x00\x01\x02\x00\x01\x02")  # a small compound
    seeds.append(b"\x0c\x00\x00\x00\x00\x00")  # a CRC header on nothing
    return seeds


def gossip_stream_seeds() -> list[bytes]:
    seeds = []
    for name in (
        "pushpull_reply_join.bin",
        "pushpull_request_from_serf.bin",
        "tcp_ack_reply.bin",
        "tcp_fallback_ping.bin",
        "tcp_err_reply.bin",
    ):
        path = CAPTURES / name
        if path.exists():
            seeds.append(path.read_bytes())
    return seeds or [b"\x06"]


def _split_length_prefixed(data: bytes) -> list[bytes]:
    """The capture files of many packets hold 4-byte big-endian lengths before each one."""
    out = []
    pos = 0
    while pos + 4 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        pos += 4
        if size == 0 or pos + size > len(data):
            return [data]
        out.append(data[pos : pos + size])
        pos += size
    return out or [data]


INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF]


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 6)):
        choice = rng.randrange(7)
        if choice == 0 and data:  # flip a bit
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif choice == 1 and data:  # set a byte to something interesting
            data[rng.randrange(len(data))] = rng.choice([0, 0xFF, 0xC1, 0xDB, 0xDD, 0xDF, 0x91])
        elif choice == 2 and data:  # truncate
            del data[rng.randrange(len(data)) :]
        elif choice == 3:  # splice another seed in
            other = rng.choice(seeds)
            cut = rng.randrange(len(other) + 1)
            data[rng.randrange(len(data) + 1) :] = other[cut:]
        elif choice == 4:  # insert a random run
            run = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
            i = rng.randrange(len(data) + 1)
            data[i:i] = run
        elif choice == 5 and len(data) >= 4:  # plant a boundary integer
            value = rng.choice(INTERESTING).to_bytes(4, "big")
            i = rng.randrange(len(data) - 3)
            data[i : i + 4] = value
        elif choice == 6 and data:  # duplicate a slice
            i = rng.randrange(len(data))
            data[i:i] = data[i : i + rng.randint(1, 32)]
    return bytes(data)


def slices(rng: random.Random, data: bytes) -> Iterator[bytes]:
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 2, 3, 7, 64, 4096])
        yield data[pos : pos + step]
        pos += step


def run_rpc_request(rng: random.Random, data: bytes) -> None:
    decoder = RequestDecoder(max_frame_size=4096)
    try:
        for piece in slices(rng, data):
            decoder.feed(piece)
            for _ in decoder:
                pass
    except ProtocolError:
        pass


def run_rpc_response(rng: random.Random, data: bytes) -> None:
    decoder = ResponseDecoder(max_frame_size=4096)
    for seq in range(1, 4):
        decoder.expect(seq, body=seq > 1, stream=seq == 3)
    try:
        for piece in slices(rng, data):
            decoder.feed(piece)
            for _ in decoder:
                pass
    except ProtocolError:
        pass


def run_gossip_packet(rng: random.Random, data: bytes) -> None:
    keyring = KEYRING if rng.random() < 0.2 else None
    try:
        packet = decode_packet(data, keyring=keyring, max_decompressed=1 << 20)
    except GossipError:
        return
    for msg_type, body in packet.messages:
        with contextlib.suppress(GossipError):
            decode_message(msg_type, body)


def run_gossip_stream(rng: random.Random, data: bytes) -> None:
    reader = StreamReader(max_decompressed=1 << 20)
    try:
        for piece in slices(rng, data):
            reader.feed(piece)
            while reader.next_message() is not None:
                pass
        reader.feed_eof()
        while reader.next_message() is not None:
            pass
    except GossipError:
        pass


TARGETS: dict[str, tuple[Callable[[], list[bytes]], Callable[[random.Random, bytes], None]]] = {
    "rpc-request": (rpc_request_seeds, run_rpc_request),
    "rpc-response": (rpc_response_seeds, run_rpc_response),
    "gossip-packet": (gossip_packet_seeds, run_gossip_packet),
    "gossip-stream": (gossip_stream_seeds, run_gossip_stream),
}


def _add_dns_targets() -> None:
    """The DNS targets live beside their test (tests/fuzz/test_fuzz_dns.py): one home."""
    sys.path.insert(0, str(ROOT / "tests" / "fuzz"))
    from test_fuzz_dns import dns_seeds, run_dns_tcp, run_dns_udp

    TARGETS["dns-udp"] = (dns_seeds, run_dns_udp)
    TARGETS["dns-tcp"] = (dns_seeds, run_dns_tcp)


_add_dns_targets()


def fuzz(
    target: str, count: int, seed: int, crash_dir: Path | None = None
) -> tuple[int, list[str]]:
    """Run ``count`` inputs against one target; returns (inputs run, crash descriptions)."""
    make_seeds, run = TARGETS[target]
    seeds = make_seeds()
    rng = random.Random(seed)
    crashes: list[str] = []
    for index in range(count):
        data = mutate(rng, seeds)
        started = time.perf_counter()
        finding = ""
        try:
            with _hang_guard():
                run(rng, data)
        except Exception as exc:  # anything but the documented error is the finding
            finding = f"{type(exc).__name__}: {exc}"
        took = time.perf_counter() - started
        if not finding and took > SLOW_INPUT:
            finding = f"took {took:.2f} s (more than {SLOW_INPUT:g} s for one input)"
        if finding:
            crashes.append(f"{target} input {index}: {finding}")
            if crash_dir is not None:
                crash_dir.mkdir(parents=True, exist_ok=True)
                (crash_dir / f"{target}-{seed}-{index}.bin").write_bytes(data)
    return count, crashes


SLOW_INPUT = 1.0
"""Seconds one input may take; a slower one is a finding (a decoder must never spin)."""
HANG_LIMIT = 10.0
"""Seconds after which an input that has not returned is interrupted and reported."""


class InputHung(Exception):
    """An input ran past :data:`HANG_LIMIT`."""


@contextlib.contextmanager
def _hang_guard() -> Iterator[None]:
    """Interrupt one input after :data:`HANG_LIMIT` (SIGALRM, main thread on Unix; elsewhere
    only :data:`SLOW_INPUT` reports it, once it returns)."""
    if (
        not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return

    def hung(_signum: int, _frame: object) -> None:
        raise InputHung(f"no return within {HANG_LIMIT:g} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, HANG_LIMIT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--target", choices=sorted(TARGETS), action="append")
    parser.add_argument("--crash-dir", type=Path, default=Path("fuzz-crashes"))
    args = parser.parse_args(argv)
    failed = False
    for target in args.target or sorted(TARGETS):
        start = time.perf_counter()
        ran, crashes = fuzz(target, args.count, args.seed, args.crash_dir)
        elapsed = time.perf_counter() - start
        print(
            f"{target}: {ran} inputs, {len(crashes)} crashes, {elapsed:.1f} s "
            f"({ran / elapsed:,.0f}/s), seed {args.seed}"
        )
        for crash in crashes[:10]:
            print("  " + crash)
        failed = failed or bool(crashes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
