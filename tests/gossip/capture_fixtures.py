"""Capture real bytes from a ``serf`` agent as fixtures for the gossip codec tests.

Not run by the tests (it needs the ``serf`` binary and loopback sockets). Run it by hand:

    /work/venv/bin/python tests/gossip/capture_fixtures.py

It starts ``serf agent`` processes on 127.0.0.1 with free ports, plays a minimal member
("py-node") against them with this project's own codecs, records what serf sends, and writes
``tests/gossip/data/*.bin`` plus ``tests/gossip/data/manifest.json`` (the names, ports, tags
and key the tests need to check the captured bytes). Every process it starts is killed.

Captured:

* ``pushpull_reply_join.bin``: serf's TCP reply to our join push/pull (compressed).
* ``pushpull_reply_events.bin``: its reply to a later anti-entropy push/pull, after 64 user
  events with random payloads (large enough for LZW to emit clear codes).
* ``udp_packets.bin``: UDP packets serf sent to us, length-prefixed (u32 BE) one after the
  other: pings, gossip (compound, compressed), a user event, a query, the leave.
* ``ack_to_our_ping.bin``: serf's UDP answer to a ping we sent it.
* ``tcp_fallback_ping.bin``: a TCP fallback ping serf sent while we ignored its UDP pings.
* ``tcp_ack_reply.bin``: serf's stream ack to a TCP ping of ours (seq 77).
* ``tcp_err_reply.bin``: serf's errResp to an encrypted stream it cannot read.
* ``pushpull_request_from_serf.bin``: the join push/pull serf sent when told to join us.
* ``encrypted_pushpull_reply.bin`` / ``encrypted_udp_packets.bin``: the same from an agent run
  with ``-encrypt`` (the key is in the manifest).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from agentrpc.gossip.messages import (
    AckResp,
    MessageType,
    NodeState,
    Ping,
    PushNodeState,
    decode_message,
    encode_message,
)
from agentrpc.gossip.packet import decode_packet, encode_packet
from agentrpc.gossip.security import Keyring, encrypt_stream_message
from agentrpc.gossip.serf_messages import SerfPushPull, encode_serf_message, encode_tags
from agentrpc.gossip.stream import PushPull, StreamEncoder, StreamReader

DATA = Path(__file__).parent / "data"
HOST = "127.0.0.1"
OUR_NAME = "py-node"
OUR_TAGS = {"role": "py"}
OUR_VSN = (1, 5, 2, 2, 5, 4)
SERF_TAGS = {"role": "web", "dc": "dc1"}


def free_port() -> int:
    """A port free for both TCP and UDP on loopback."""
    while True:
        with socket.socket() as tcp:
            tcp.bind((HOST, 0))
            port = int(tcp.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind((HOST, port))
            except OSError:
                continue
        return port


@contextlib.contextmanager
def serf_agent(
    name: str, port: int, rpc_port: int, *extra: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``serf agent`` on loopback; always kill it afterwards."""
    args = ["serf", "agent", f"-bind={HOST}:{port}", f"-rpc-addr={HOST}:{rpc_port}"]
    args += [f"-node={name}", "-log-level=debug", *extra]
    for key, value in SERF_TAGS.items():
        args.append(f"-tag={key}={value}")
    log_path = Path(tempfile.gettempdir()) / f"capture-serf-{name}.log"
    print(f"serf {name} logs to {log_path}")
    log = open(log_path, "wb")  # noqa: SIM115
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
                break
            time.sleep(0.1)
        yield proc
    finally:
        proc.kill()
        proc.wait()
        log.close()


def our_state(port: int, incarnation: int = 1) -> PushNodeState:
    return PushNodeState(
        name=OUR_NAME,
        addr=socket.inet_aton(HOST),
        port=port,
        meta=encode_tags(OUR_TAGS),
        incarnation=incarnation,
        state=NodeState.ALIVE,
        vsn=OUR_VSN,
    )


def push_pull(serf_port: int, our_port: int, *, join: bool, keyring: Keyring | None) -> bytes:
    """Send our push/pull (compressed, encrypted with ``keyring``) and return the raw reply."""
    encoder = StreamEncoder(keyring=keyring)
    user_state = encode_serf_message(SerfPushPull(ltime=1, status_ltimes={OUR_NAME: 1}))
    request = encoder.push_pull([our_state(our_port)], user_state, join=join)
    with socket.create_connection((HOST, serf_port), 5) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    reply = b"".join(chunks)
    reader = StreamReader(keyring=keyring)
    reader.feed(reply)
    reader.feed_eof()
    print("push/pull reply:", type(reader.next_message()).__name__, len(reply), "bytes")
    return reply


class Member:
    """Our side: a UDP socket and a TCP listener on one port."""

    def __init__(self, keyring: Keyring | None = None) -> None:
        self.port = free_port()
        self.keyring = keyring
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((HOST, self.port))
        self.udp.settimeout(0.1)
        self.tcp = socket.socket()
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((HOST, self.port))
        self.tcp.listen()
        self.tcp.settimeout(0.1)
        self.packets: list[bytes] = []
        self.tcp_captures: list[tuple[str, bytes]] = []

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()

    def run(self, seconds: float, *, answer_pings: bool = True) -> None:
        """Record packets for ``seconds``, acking pings unless told not to."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                packet, sender = self.udp.recvfrom(65536)
            except TimeoutError:
                packet = b""
            if packet:
                self.packets.append(packet)
                if answer_pings:
                    self._answer(packet, sender)
            self._accept_tcp()

    def _answer(self, packet: bytes, sender: tuple[str, int]) -> None:
        inbound = decode_packet(packet, keyring=self.keyring)
        for msg_type, body in inbound.messages:
            if msg_type != MessageType.PING:
                continue
            ping = decode_message(msg_type, body)
            assert isinstance(ping, Ping)
            target = sender
            if ping.source_addr and ping.source_port:
                target = (socket.inet_ntoa(ping.source_addr), ping.source_port)
            ack = encode_packet(encode_message(AckResp(ping.seq_no)), keyring=self.keyring)
            self.udp.sendto(ack, target)

    def _accept_tcp(self) -> None:
        try:
            conn, _ = self.tcp.accept()
        except TimeoutError:
            return
        with conn:
            conn.settimeout(2)
            reader = StreamReader(keyring=self.keyring)
            raw = b""
            message = None
            while message is None:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                raw += chunk
                reader.feed(chunk)
                message = reader.next_message()
            self.tcp_captures.append((type(message).__name__, raw))
            encoder = StreamEncoder(keyring=self.keyring)
            if isinstance(message, Ping):
                conn.sendall(encoder.ack(AckResp(message.seq_no)))
            elif isinstance(message, PushPull):
                user_state = encode_serf_message(SerfPushPull(ltime=2, status_ltimes={OUR_NAME: 1}))
                reply = encoder.push_pull([our_state(self.port)], user_state, join=message.join)
                conn.sendall(reply)


def tcp_exchange(port: int, request: bytes) -> bytes:
    """Send one stream message to serf and return everything it sends back."""
    with socket.create_connection((HOST, port), 5) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def serf_cli(*args: str) -> None:
    subprocess.run(["serf", *args], check=True, capture_output=True, timeout=30)


def write_packets(name: str, packets: list[bytes]) -> None:
    blob = b"".join(struct.pack(">I", len(p)) + p for p in packets)
    (DATA / name).write_bytes(blob)


def capture_plain(manifest: dict[str, object]) -> None:
    serf_port, rpc_port = free_port(), free_port()
    member = Member()
    rpc = f"-rpc-addr={HOST}:{rpc_port}"
    try:
        with serf_agent("serf-a", serf_port, rpc_port) as agent:
            (DATA / "pushpull_reply_join.bin").write_bytes(
                push_pull(serf_port, member.port, join=True, keyring=None)
            )
            member.run(3)
            # A ping of ours, and serf's ack (carrying its Vivaldi coordinate).
            ping = Ping(
                seq_no=4242,
                node="serf-a",
                source_addr=socket.inet_aton(HOST),
                source_port=member.port,
                source_node=OUR_NAME,
            )
            member.udp.sendto(encode_packet(encode_message(ping)), (HOST, serf_port))
            acks: list[bytes] = []
            deadline = time.monotonic() + 3
            while not acks and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    packet, _ = member.udp.recvfrom(65536)
                    for msg_type, _body in decode_packet(packet).messages:
                        if msg_type == MessageType.ACK_RESP:
                            acks.append(packet)
                        elif msg_type == MessageType.PING:
                            member._answer(packet, (HOST, serf_port))
            (DATA / "ack_to_our_ping.bin").write_bytes(acks[0])
            # A TCP fallback ping of ours, and serf's ack on the same connection.
            (DATA / "tcp_ack_reply.bin").write_bytes(
                tcp_exchange(serf_port, StreamEncoder().ping(Ping(seq_no=77, node="serf-a")))
            )
            # An encrypted envelope to an agent without encryption: serf answers errResp.
            bogus = encrypt_stream_message(Keyring(bytes(16)), b"\x00")
            (DATA / "tcp_err_reply.bin").write_bytes(tcp_exchange(serf_port, bogus))
            # serf dials us for a join push/pull.
            joiner = subprocess.Popen(
                ["serf", "join", rpc, f"{HOST}:{member.port}"], stdout=subprocess.DEVNULL
            )
            member.run(2)
            joiner.wait(10)
            serf_cli("event", rpc, "deploy", "payload-123")
            serf_cli(
                "query",
                rpc,
                "-timeout=1s",
                f"-node={OUR_NAME}",
                "-tag=role=py",
                "-no-ack",
                "q-name",
                "q-payload",
            )
            member.run(2)
            # Ignore UDP pings until serf falls back to a TCP ping.
            member.run(6, answer_pings=False)
            for index in range(64):
                payload = secrets.token_hex(150)
                serf_cli("event", rpc, f"ev-{index}", payload)
            member.run(1)
            (DATA / "pushpull_reply_events.bin").write_bytes(
                push_pull(serf_port, member.port, join=False, keyring=None)
            )
            serf_cli("leave", rpc)
            member.run(3)
            agent.wait(10)
        captures = dict(reversed(member.tcp_captures))
        (DATA / "tcp_fallback_ping.bin").write_bytes(captures["Ping"])
        (DATA / "pushpull_request_from_serf.bin").write_bytes(captures["PushPull"])
        write_packets("udp_packets.bin", member.packets)
        manifest["plain"] = {
            "serf_node": "serf-a",
            "serf_port": serf_port,
            "our_node": OUR_NAME,
            "our_port": member.port,
            "serf_tags": SERF_TAGS,
            "our_tags": OUR_TAGS,
            "event": ["deploy", "payload-123"],
            "query": ["q-name", "q-payload"],
            "our_ping_seq": 4242,
            "our_tcp_ping_seq": 77,
        }
    finally:
        member.close()


def capture_encrypted(manifest: dict[str, object]) -> None:
    key = secrets.token_bytes(32)
    key_b64 = base64.b64encode(key).decode()
    keyring = Keyring(key)
    serf_port, rpc_port = free_port(), free_port()
    member = Member(keyring)
    try:
        with serf_agent("serf-enc", serf_port, rpc_port, f"-encrypt={key_b64}"):
            (DATA / "encrypted_pushpull_reply.bin").write_bytes(
                push_pull(serf_port, member.port, join=True, keyring=keyring)
            )
            member.run(3)
        write_packets("encrypted_udp_packets.bin", member.packets)
        manifest["encrypted"] = {
            "serf_node": "serf-enc",
            "serf_port": serf_port,
            "our_port": member.port,
            "key": key_b64,
        }
    finally:
        member.close()


def main() -> None:
    DATA.mkdir(exist_ok=True)
    manifest: dict[str, object] = {
        "serf_version": subprocess.run(
            ["serf", "version"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[0]
    }
    capture_plain(manifest)
    capture_encrypted(manifest)
    (DATA / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    for path in sorted(DATA.iterdir()):
        print(f"{path.name}: {path.stat().st_size} bytes")
    os.sync()


if __name__ == "__main__":
    main()
