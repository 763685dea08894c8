"""The load generator: a separate process that drives any agent RPC server over TCP.

It is written for speed and fairness, and the very same code drives agentrpc and serf:

* requests are encoded before the clock starts (:func:`benchmarks.wire.encode_requests`), so
  sending is slicing one buffer;
* every read asks for 1 MiB (``recv_into`` a reused buffer) and feeds a streaming
  ``msgpack.Unpacker``; only reply headers become Python objects, bodies are skipped;
* one ``epoll`` loop serves every connection, non-blocking, with a window of ``depth``
  requests in flight per connection (depth 1 on one connection is a closed loop of round
  trips); the garbage collector is off while the clock runs.

Each measurement runs for a fixed time after a warm-up (and never past a request cap or a
deadline); the rate is the replies counted between the end of the warm-up and the end of the
window divided by that interval. Requests still in flight at the end are drained, not counted.

Protocol with the controller: one JSON job per line on stdin, one JSON result per line on
stdout (``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``). Run it as
``python -m benchmarks.loadgen``.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import json
import math
import os
import resource
import selectors
import socket
import sys
import time
import traceback
from array import array
from collections.abc import Callable, Iterator
from typing import Any, Final

import msgpack

from .wire import READ_SIZE, ReplyCounter, connect, encode_request, encode_requests, recv_replies

DRAIN_TIMEOUT: Final = 30.0
"""How long requests still in flight may take to come back after the window closes."""


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _Encoded:
    """Cache of pre-encoded request buffers, keyed by (command, body, count)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[bytes, array[int]]] = {}

    def get(self, command: str, body: Any, count: int) -> tuple[bytes, array[int]]:
        key = json.dumps([command, body])
        cached = self._cache.get(key)
        if cached is None or len(cached[1]) - 1 < count:
            cached = encode_requests(command, body, count)
            self._cache[key] = cached
        return cached


ENCODED = _Encoded()


class _Conn:
    __slots__ = ("cap", "counter", "replies", "sent", "sock", "writing")

    def __init__(self, sock: socket.socket, reply_body: bool, cap: int) -> None:
        self.sock = sock
        self.counter = ReplyCounter(reply_body)
        self.cap = cap
        self.replies = 0
        self.sent = 0
        self.writing = False


def pipelined(job: dict[str, Any]) -> dict[str, Any]:
    """Throughput with ``depth`` requests in flight on each of ``connections`` connections."""
    host, port = job["host"], int(job["port"])
    depth, connections = int(job["depth"]), int(job["connections"])
    cap = int(job["max_requests"])
    warmup, duration = float(job["warmup"]), float(job["duration"])
    buffer, offsets = ENCODED.get(job["command"], job.get("body"), cap)
    view = memoryview(buffer)
    conns = [_Conn(connect(host, port), bool(job["reply_body"]), cap) for _ in range(connections)]
    selector = selectors.EpollSelector()
    for conn in conns:
        conn.sock.setblocking(False)
        selector.register(conn.sock, selectors.EVENT_READ, conn)
    read_buffer = bytearray(READ_SIZE)
    read_view = memoryview(read_buffer)
    both = selectors.EVENT_READ | selectors.EVENT_WRITE

    def pump(conn: _Conn) -> None:
        target = offsets[min(conn.cap, conn.replies + depth)]
        sent = conn.sent
        if sent < target:
            try:  # noqa: SIM105 - the hot path: no context manager per send
                sent += conn.sock.send(view[sent:target])
            except BlockingIOError:
                pass
            conn.sent = sent
        if sent < target:
            if not conn.writing:
                selector.modify(conn.sock, both, conn)
                conn.writing = True
        elif conn.writing:
            selector.modify(conn.sock, selectors.EVENT_READ, conn)
            conn.writing = False

    total = 0
    remaining = connections
    with no_gc():
        cpu_a = cpu_b = cpu_start = time.process_time()
        start = time.perf_counter()
        warm_end = start + warmup
        window_end = warm_end + duration
        deadline = window_end + DRAIN_TIMEOUT
        mark_a: tuple[float, int] | None = None
        mark_b: tuple[float, int] | None = None
        for conn in conns:
            pump(conn)
        while remaining:
            events = selector.select(0.05)
            for key, mask in events:
                conn = key.data
                if mask & selectors.EVENT_READ:
                    size = conn.sock.recv_into(read_buffer)
                    if not size:
                        raise ConnectionError("the server closed the connection")
                    got = conn.counter.feed(read_view[:size])
                    if got:
                        conn.replies += got
                        total += got
                        if conn.replies >= conn.cap:
                            remaining -= 1
                            selector.unregister(conn.sock)
                            continue
                pump(conn)
            now = time.perf_counter()
            if mark_a is None and now >= warm_end:
                mark_a = (now, total)
                cpu_a = time.process_time()
            if mark_b is None and now >= window_end:
                mark_b = (now, total)
                cpu_b = time.process_time()
                # Stop issuing: finish only the requests already (partly) sent, then drain.
                for conn in conns:
                    conn.cap = bisect.bisect_left(offsets, conn.sent)
                    if conn.replies >= conn.cap and conn.sock.fileno() in selector.get_map():
                        remaining -= 1
                        selector.unregister(conn.sock)
            if now > deadline:
                raise TimeoutError(f"requests still in flight {DRAIN_TIMEOUT} s after the window")
        end = time.perf_counter()
    selector.close()
    errors = sum(conn.counter.errors for conn in conns)
    first_error = next((c.counter.first_error for c in conns if c.counter.errors), "")
    last_seqs = [conn.counter.last_seq for conn in conns]
    for conn in conns:
        conn.sock.close()
    capped = mark_b is None  # every request answered before the window closed
    if mark_a is None:  # finished (request cap) within the warm-up: measure everything
        mark_a = (start, 0)
        cpu_a = cpu_start
    if mark_b is None:
        mark_b = (end, total)
        cpu_b = time.process_time()
    counted = mark_b[1] - mark_a[1]
    elapsed = mark_b[0] - mark_a[0]
    return {
        "rate": counted / elapsed if elapsed > 0 else 0.0,
        "replies": total,
        "counted": counted,
        "elapsed": elapsed,
        "errors": errors,
        "first_error": first_error,
        "capped": capped,
        "client_cores": (cpu_b - cpu_a) / elapsed if elapsed > 0 else 0.0,
        "in_order": all(
            seq == conn.replies + 1 for seq, conn in zip(last_seqs, conns, strict=True)
        ),
    }


def sequential(job: dict[str, Any]) -> dict[str, Any]:
    """Closed-loop round trips on one blocking connection; latency of every round trip."""
    host, port = job["host"], int(job["port"])
    cap = int(job["max_requests"])
    warmup, duration = float(job["warmup"]), float(job["duration"])
    buffer, offsets = ENCODED.get(job["command"], job.get("body"), cap)
    view = memoryview(buffer)
    sock = connect(host, port)
    counter = ReplyCounter(bool(job["reply_body"]))
    read_buffer = bytearray(READ_SIZE)
    latencies = array("q")
    clock = time.perf_counter_ns
    sendall = sock.sendall
    with no_gc():
        start = time.perf_counter_ns()
        warm_end = start + int(warmup * 1e9)
        window_end = warm_end + int(duration * 1e9)
        done = 0
        window_start = 0
        measured = 0
        cpu_start = time.process_time()
        for index in range(cap):
            before = clock()
            sendall(view[offsets[index] : offsets[index + 1]])
            recv_replies(sock, counter, 1, read_buffer)
            after = clock()
            done += 1
            if before >= warm_end:
                if not measured:
                    window_start = before
                    cpu_start = time.process_time()
                latencies.append(after - before)
                measured += 1
            if after >= window_end:
                break
        end = clock()
        cpu = time.process_time() - cpu_start
    sock.close()
    if not measured:  # the cap was reached within the warm-up: keep every sample
        window_start = start
    ordered = sorted(latencies) if latencies else [0]
    elapsed = (end - window_start) / 1e9
    counted = measured or done
    return {
        "rate": counted / elapsed if elapsed > 0 else 0.0,
        "replies": done,
        "counted": counted,
        "elapsed": elapsed,
        "errors": counter.errors,
        "first_error": counter.first_error,
        "p50_us": percentile(ordered, 0.50) / 1e3,
        "p90_us": percentile(ordered, 0.90) / 1e3,
        "p99_us": percentile(ordered, 0.99) / 1e3,
        "max_us": ordered[-1] / 1e3,
        "samples": len(latencies),
        "client_cores": cpu / elapsed if elapsed > 0 else 0.0,
        "in_order": counter.last_seq == done + 1,
    }


def percentile(ordered: list[int], fraction: float) -> float:
    """Nearest-rank percentile of sorted samples."""
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return float(ordered[index])


# ----------------------------------------------------------------------------- idle connections

_IDLE: list[socket.socket] = []


def idle_open(job: dict[str, Any]) -> dict[str, Any]:
    """Open ``count`` handshaken connections and keep them open until ``idle_release``."""
    host, port, count = job["host"], int(job["port"]), int(job["count"])
    needed = count + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))
    start = time.perf_counter()
    deadline = start + float(job.get("timeout", 120.0))
    for _ in range(count):
        sock = connect(host, port)
        _IDLE.append(sock)
        if time.perf_counter() > deadline:
            raise TimeoutError(f"only {len(_IDLE)} of {count} connections opened in time")
    return {"opened": len(_IDLE), "elapsed": time.perf_counter() - start}


def idle_release(_job: dict[str, Any]) -> dict[str, Any]:
    """Close the idle connections (with a reset, so no TIME_WAIT piles up on loopback)."""
    closed = len(_IDLE)
    linger = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # struct linger {on=1, linger=0}
    while _IDLE:
        sock = _IDLE.pop()
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        sock.close()
    return {"closed": closed}


# ----------------------------------------------------------------------------- monitor reader

START_MARK: Final = "bench-monitor-start"
DONE_MARK: Final = "bench-monitor-done"


def monitor(job: dict[str, Any]) -> dict[str, Any]:
    """Read a monitor stream as fast as possible; count the lines between two marker lines.

    The clock starts at the batch holding the start marker and stops at the last batch of
    lines before the done marker (the producer pauses before sending that marker), so the
    replayed ring is not counted. If the done marker never comes (a producer that outran the
    monitor queue can lose it), the stream ends after ``idle`` seconds without data.
    """
    host, port = job["host"], int(job["port"])
    timeout = float(job.get("timeout", 60.0))
    sock = connect(host, port)
    seq = 2
    sock.sendall(encode_request("monitor", seq, {"LogLevel": job.get("level", "INFO")}))
    read_buffer = bytearray(READ_SIZE)
    view = memoryview(read_buffer)
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=256 * READ_SIZE)
    sock.settimeout(float(job.get("idle", 3.0)))
    acked = False
    header_next = True
    lines = 0
    counted = 0
    started_at = 0.0
    last_at = 0.0
    done = False
    replayed = 0
    deadline = time.perf_counter() + timeout
    with no_gc():
        while not done:
            try:
                size = sock.recv_into(read_buffer)
            except TimeoutError:
                break
            if not size:
                raise ConnectionError("the server closed the monitor stream")
            now = time.perf_counter()
            unpacker.feed(view[:size])
            for obj in unpacker:
                if not acked:
                    if obj["Error"]:
                        raise ConnectionError(f"monitor refused: {obj['Error']}")
                    acked = True
                    continue
                if header_next:
                    header_next = False
                    continue
                header_next = True
                lines += 1
                line = obj["Log"]
                if not started_at:
                    if line.endswith(START_MARK):
                        started_at = now
                        replayed = lines - 1
                elif line.endswith(DONE_MARK):
                    done = True
                    break
                else:
                    counted += 1
                    last_at = now
            if now > deadline:
                raise TimeoutError(f"no done marker within {timeout} s ({lines} lines read)")
    if not started_at:
        raise ConnectionError(f"the start marker never arrived ({lines} lines read)")
    sock.setblocking(True)
    sock.sendall(encode_request("stop", seq + 1, {"Stop": seq}))
    sock.close()
    elapsed = last_at - started_at
    return {
        "rate": counted / elapsed if elapsed > 0 else 0.0,
        "counted": counted,
        "elapsed": elapsed,
        "replayed": replayed,
        "lines": lines,
        "done_marker": done,
    }


# ----------------------------------------------------------------------------- self-check


def selfcheck(job: dict[str, Any]) -> dict[str, Any]:
    """The client's own ceiling: parse a real reply, repeated, from memory (no server)."""
    host, port = job["host"], int(job["port"])
    reply_body = bool(job["reply_body"])
    sock = connect(host, port)
    sock.sendall(encode_request(job["command"], 2, job.get("body")))
    # Capture the raw bytes of exactly one reply.
    raw = bytearray()
    counter = ReplyCounter(reply_body)
    while True:
        data = sock.recv(READ_SIZE)
        if not data:
            raise ConnectionError("the server closed the connection")
        raw += data
        if counter.feed(data):
            break
    sock.close()
    copies = int(job.get("copies", 100_000))
    stream = bytes(raw) * copies
    view = memoryview(stream)
    parser = ReplyCounter(reply_body)
    with no_gc():
        start = time.perf_counter()
        total = 0
        for offset in range(0, len(stream), READ_SIZE):
            total += parser.feed(view[offset : offset + READ_SIZE])
        elapsed = time.perf_counter() - start
    assert total == copies, (total, copies)
    return {"rate": copies / elapsed, "reply_bytes": len(raw), "errors": parser.errors}


def affinity(job: dict[str, Any]) -> dict[str, Any]:
    """Move the generator to other CPUs (``cpus``: a list) for the jobs that follow."""
    os.sched_setaffinity(0, set(job["cpus"]))
    return {"cpus": sorted(os.sched_getaffinity(0))}


JOBS: Final[dict[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "affinity": affinity,
    "pipelined": pipelined,
    "sequential": sequential,
    "idle_open": idle_open,
    "idle_release": idle_release,
    "monitor": monitor,
    "selfcheck": selfcheck,
}


def main() -> None:
    for line in sys.stdin:
        job = json.loads(line)
        if job["kind"] == "exit":
            break
        try:
            result = {"ok": True, **JOBS[job["kind"]](job)}
        except Exception as exc:
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc(file=sys.stderr)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    idle_release({})


if __name__ == "__main__":
    main()
