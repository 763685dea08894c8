"""Build the small Go test programs under tests/ against Debian's HashiCorp libraries.

GOPATH mode (``GO111MODULE=off``): the libraries come from Debian's Go source tree
(/usr/share/gocode), the program from a GOPATH of its own in a temporary directory. Builds are
cached per source hash for the session (one build per program however many tests use it)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

DEBIAN_GOPATH = Path("/usr/share/gocode")
BUILD_TIMEOUT = 300.0
_CACHE = Path(tempfile.gettempdir()) / "agentrpc-go-builds"


def require_go() -> str:
    """The go command; missing: a skip on a developer's machine, a failure in CI (where
    AGENTRPC_REQUIRE_SERF=1 says interop must run), as for the serf binary."""
    path = shutil.which("go")
    if path is None or not DEBIAN_GOPATH.is_dir():
        message = "Go and Debian's HashiCorp Go libraries are not installed (see scripts/test.sh)"
        if os.environ.get("AGENTRPC_REQUIRE_SERF") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def build_go_program(source_dir: Path, name: str | None = None) -> Path:
    """Build the Go ``main`` package in ``source_dir`` (its .go files) and return the binary."""
    go = require_go()
    sources = sorted(source_dir.glob("*.go"))
    if not sources:
        raise FileNotFoundError(f"no .go files in {source_dir}")
    digest = hashlib.sha256()
    for src in sources:
        digest.update(src.name.encode())
        digest.update(src.read_bytes())
    program = name or source_dir.name
    root = _CACHE / f"{program}-{digest.hexdigest()[:16]}"
    binary = root / "bin" / program
    if binary.exists():
        return binary
    package = root / "src" / "agentrpctest" / program
    package.mkdir(parents=True, exist_ok=True)
    for src in sources:
        shutil.copyfile(src, package / src.name)
    env = dict(os.environ)
    env.update(
        GO111MODULE="off",
        GOPATH=f"{root}:{DEBIAN_GOPATH}",
        GOCACHE=str(_CACHE / "gocache"),
    )
    partial = binary.with_suffix(".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [go, "build", "-o", str(partial), f"agentrpctest/{program}"],
        env=env,
        cwd=package,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"go build of {source_dir} failed:\n{done.stderr[-4000:]}")
    partial.replace(binary)  # atomic: a concurrent test never runs a half-written binary
    return binary
