"""Builds the benchmarks' Go programs (``benchmarks/go/<name>/``), once per process.

GOPATH mode, no modules (``GO111MODULE=off``): each program is copied into a GOPATH of its
own in a temporary directory, with Debian's Go source tree (/usr/share/gocode) after it for
any HashiCorp library a program imports. The binary lives in that temporary directory until
the process exits. Builds are cached per source hash, so one run builds each program once
however many measurements use it.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Final

DEBIAN_GOPATH: Final = Path("/usr/share/gocode")
BUILD_TIMEOUT: Final = 300.0
LOADGEN: Final = "loadgen"
"""The Go load generator (and trivial server) of :mod:`benchmarks.engine_limit`."""

_built: dict[str, Path] = {}


class GoBuildError(RuntimeError):
    """Go is missing or a program did not build."""


def go_command() -> str | None:
    return shutil.which("go")


def program_dir(root: Path, name: str) -> Path:
    """Where the sources of program ``name`` are in a tree rooted at ``root``."""
    return root / "benchmarks" / "go" / name


def build(source_dir: Path, name: str | None = None) -> Path:
    """Build the Go ``main`` package in ``source_dir`` and return the binary's path."""
    go = go_command()
    if go is None:
        raise GoBuildError("the go command is not installed (apt-get install golang-go)")
    sources = sorted(source_dir.glob("*.go"))
    sources = [src for src in sources if not src.name.endswith("_test.go")]
    if not sources:
        raise GoBuildError(f"no .go files in {source_dir}")
    program = name or source_dir.name
    digest = hashlib.sha256(program.encode())
    for src in sources:
        digest.update(src.name.encode())
        digest.update(src.read_bytes())
    key = digest.hexdigest()
    if key in _built and _built[key].exists():
        return _built[key]
    root = Path(tempfile.mkdtemp(prefix=f"agentrpc-bench-go-{program}-"))
    atexit.register(shutil.rmtree, root, True)
    package = root / "src" / "agentrpcbench" / program
    package.mkdir(parents=True)
    for src in sources:
        shutil.copyfile(src, package / src.name)
    binary = root / "bin" / program
    env = dict(os.environ)
    env.update(GO111MODULE="off", GOPATH=f"{root}{os.pathsep}{DEBIAN_GOPATH}", GOFLAGS="")
    env.setdefault("GOCACHE", str(Path(tempfile.gettempdir()) / "agentrpc-bench-gocache"))
    try:
        done = subprocess.run(
            [go, "build", "-o", str(binary), f"agentrpcbench/{program}"],
            env=env,
            cwd=package,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise GoBuildError(f"go build of {source_dir} took over {BUILD_TIMEOUT:.0f} s") from exc
    if done.returncode != 0:
        raise GoBuildError(f"go build of {source_dir} failed:\n{done.stderr[-4000:]}")
    _built[key] = binary
    return binary


def loadgen_binary(root: Path) -> Path:
    """The Go load generator built from the tree at ``root`` (the suite's snapshot)."""
    return build(program_dir(root, LOADGEN), LOADGEN)
