"""Run the README's tour, command by command, through a shell; print what happened as JSON.

    python tour_runner.py README.md REPO [--remap-ports]

The tour is the ``sh`` block after ``<!-- tour -->``. Its first line puts ``agentrpc`` on the
PATH (``. .venv/bin/activate``); every later line runs in a new ``bash`` after that line, in
REPO, with a PATH that holds no ``agentrpc`` of its own, so the README's set-up is what makes
the commands work. A line ending in ``&`` starts an agent in the background (ready once it
logs "RPC listening on", and "Join completed" when it joins at start); ``agentrpc monitor``
gets SIGINT once it printed a line, as a person's Ctrl-C. Nothing else is special.

The tour uses the default ports, so the test runs this in a network namespace of its own
(``unshare -rn``). Where that is not allowed, ``--remap-ports`` moves each well-known port to a
free one: literal ports in the commands are replaced, ``AGENTRPC_RPC_ADDR`` names the default
RPC address, ``CONSUL_HTTP_ADDR`` the default HTTP address (for ``agentrpc kv`` and
``catalog``), and a ``serve`` line gets the default gossip, server, HTTP and DNS addresses as
flags.

The processes it starts get ``XDG_DATA_HOME`` set to a temporary directory, removed at the end,
so that the agents' data (``agentrpc/...`` under it) never lands in the user's home.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

DEFAULT_PORTS = (8400, 8300, 8301, 8302, 8500, 8600)
"""RPC, server port, serf LAN and WAN, HTTP API, DNS: what a plain ``agentrpc serve`` takes."""
TOUR_PORTS = (18400, 18301, 18500, 18600)
"""The second agent's own ports, in the tour's text."""
COMMAND_TIMEOUT = 30.0
READY_TIMEOUT = 30.0


def tour_lines(readme: str) -> list[str]:
    """The tour's commands, comments stripped."""
    after = readme.split("<!-- tour -->", 1)[1]
    block = after.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = []
    for raw in block.splitlines():
        command = re.split(r"\s{2,}#", raw, maxsplit=1)[0].strip()
        if command and not command.startswith("#"):
            lines.append(command)
    return lines


def free_port() -> int:
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def clean_path() -> str:
    """PATH without any directory that already holds an ``agentrpc``."""
    keep = []
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if entry and not (Path(entry) / "agentrpc").exists():
            keep.append(entry)
    return os.pathsep.join(keep)


class Output:
    """A process's stream, read by a thread (bounded: the last 1 MiB is kept)."""

    def __init__(self, stream: Any) -> None:
        self.data = b""
        self.grew = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):
            with self.grew:
                self.data = (self.data + chunk)[-(1 << 20) :]
                self.grew.notify_all()
        with self.grew:
            self.grew.notify_all()

    def wait_for(self, needles: list[bytes], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.grew:
            while not all(needle in self.data for needle in needles):
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return all(needle in self.data for needle in needles)
                self.grew.wait(min(left, 0.5))
        return True

    def text(self) -> str:
        self._thread.join(timeout=5)
        return self.data.decode(errors="replace")


def main() -> None:
    readme, repo = Path(sys.argv[1]).read_text(), sys.argv[2]
    remap = "--remap-ports" in sys.argv[3:]
    lines = tour_lines(readme)
    setup, commands = lines[0], lines[1:]
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AGENTRPC_", "CONSUL_HTTP_"))
    }
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = clean_path()
    data_home = tempfile.mkdtemp(prefix="agentrpc-tour-data-")
    env["XDG_DATA_HOME"] = data_home
    ports = {port: port for port in (*DEFAULT_PORTS, *TOUR_PORTS)}
    if remap:
        ports = {port: free_port() for port in ports}
        env["AGENTRPC_RPC_ADDR"] = f"127.0.0.1:{ports[8400]}"
        env["CONSUL_HTTP_ADDR"] = f"127.0.0.1:{ports[8500]}"

    def rewrite(command: str) -> str:
        if not remap:
            return command
        command = re.sub(
            r"(?<=127\.0\.0\.1:)(\d+)\b", lambda m: str(ports.get(int(m[1]), m[1])), command
        )
        if command.startswith("agentrpc serve"):
            for flag, port in (
                ("--serf-lan-addr", 8301),
                ("--serf-wan-addr", 8302),
                ("--server-addr", 8300),
                ("--http-addr", 8500),
                ("--dns-addr", 8600),
            ):
                if flag not in command:
                    command += f" {flag} 127.0.0.1:{ports[port]}"
        return command

    results: list[dict[str, Any]] = []
    background: list[tuple[str, subprocess.Popen[bytes], Output]] = []
    bash = shutil.which("bash") or "/bin/bash"
    try:
        for original in commands:
            command = original.removesuffix("&").strip()
            shell = f"{setup} && exec {rewrite(command)}"
            entry: dict[str, Any] = {"command": original}
            if original.endswith("&"):
                process = subprocess.Popen(
                    [bash, "-c", shell], cwd=repo, env=env,
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                )  # fmt: skip
                output = Output(process.stderr)
                needles = [b"RPC listening on"]
                if "--join" in command:
                    needles.append(b"Join completed")
                entry["ready"] = output.wait_for(needles, READY_TIMEOUT)
                background.append((original, process, output))
            elif command.startswith("agentrpc monitor"):
                process = subprocess.Popen(
                    [bash, "-c", shell], cwd=repo, env=env,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                )  # fmt: skip
                out, error = Output(process.stdout), Output(process.stderr)
                entry["printed"] = out.wait_for([b"\n"], READY_TIMEOUT)
                process.send_signal(signal.SIGINT)
                try:
                    entry["returncode"] = process.wait(timeout=COMMAND_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    entry["returncode"] = "timed out"
                entry["stdout"], entry["stderr"] = out.text()[-4000:], error.text()[-4000:]
            else:
                try:
                    done = subprocess.run(
                        [bash, "-c", shell], cwd=repo, env=env,
                        capture_output=True, timeout=COMMAND_TIMEOUT, check=False,
                    )  # fmt: skip
                    entry["returncode"] = done.returncode
                    entry["stdout"] = done.stdout.decode(errors="replace")[-4000:]
                    entry["stderr"] = done.stderr.decode(errors="replace")[-4000:]
                except subprocess.TimeoutExpired:
                    entry["returncode"] = "timed out"
            results.append(entry)
        # The tour ends with the agents told to leave: each exits by itself.
        for original, process, output in background:
            try:
                code: int | str = process.wait(timeout=COMMAND_TIMEOUT)
            except subprocess.TimeoutExpired:
                code = "still running"
            results.append(
                {"background": original, "returncode": code, "stderr": output.text()[-4000:]}
            )
    finally:
        for _, process, _ in background:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(data_home, ignore_errors=True)
    print(json.dumps({"remapped": remap, "results": results}))


if __name__ == "__main__":
    main()
