from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _installed_first() -> None:
    """The tests import the installed agentrpc (its ``agentrpc.transports`` and
    ``agentrpc.cli`` mapped by the package, not found by path), never the checkout through
    ``sys.path``: ``python -m pytest`` puts the working directory first, so it moves to the
    end, where the tests still find ``benchmarks`` and ``scripts`` (not installed)."""
    here = {"", ".", str(REPO_ROOT)}
    kept = [entry for entry in sys.path if entry not in here and Path(entry) != REPO_ROOT]
    sys.path[:] = [*kept, str(REPO_ROOT)]


_installed_first()

import pytest  # noqa: E402 - after the path is set
from rpc_helpers import TRANSPORTS  # noqa: E402


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """Every agent-level test runs over TCP, unix sockets and the in-memory transport."""
    return str(request.param)


@pytest.fixture
def serf_binary() -> str:
    """The real serf agent. Missing: a skip on a developer's machine, a failure in CI
    (AGENTRPC_REQUIRE_SERF=1), so that interop is never silently untested there."""
    path = shutil.which("serf")
    if path is None:
        message = "the real 'serf' binary is not installed (apt-get install serf)"
        if os.environ.get("AGENTRPC_REQUIRE_SERF") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True, scope="session")
def _private_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``agentrpc serve`` keeps its state in the user's data directory by default
    (``$XDG_DATA_HOME/agentrpc/...``): agents the tests start, in process or as child
    processes, keep theirs in a directory of this test session instead."""
    saved = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("XDG_DATA_HOME", None)
        else:
            os.environ["XDG_DATA_HOME"] = saved
