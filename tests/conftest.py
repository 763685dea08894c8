from __future__ import annotations

import os
import shutil

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
