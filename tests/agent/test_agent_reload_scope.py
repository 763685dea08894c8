"""What a reload applies, and where: RELOAD_AT_ONCE at once, RELOAD_NEW_CONNECTIONS to what
opens next on both ports (each live connection keeps the limits it started with)."""

from __future__ import annotations

import json
from pathlib import Path

from rpc_helpers import client_for, running_agent


async def test_reload_applies_connection_limits_to_both_ports(tmp_path: Path) -> None:
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"max_frame_size": 65536}))
    async with running_agent("tcp", files=[str(config)]) as agent, client_for(agent) as client:
        assert agent.server_port is not None
        assert agent.server_port.rpc.max_object_size == 65536
        config.write_text(
            json.dumps({"max_frame_size": 4096, "max_connections": 9, "handshake_timeout": 3.0})
        )
        assert await client.reload() is None
        assert agent.limits.max_frame_size == 4096
        assert agent.limits.handshake_timeout == 3.0
        assert agent.server_port.rpc.max_object_size == 4096
        assert agent.config.max_connections == 9
        # The connection that asked keeps working under the limits it started with.
        assert len(await client.members_lan()) == 1
