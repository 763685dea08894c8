from __future__ import annotations

import pytest
from rpc_helpers import TRANSPORTS


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """Every agent-level test runs over TCP, unix sockets and the in-memory transport."""
    return str(request.param)
