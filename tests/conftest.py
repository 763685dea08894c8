from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from rpc_helpers import TRANSPORTS


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
