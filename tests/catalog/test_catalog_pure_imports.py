"""The catalog's sans-I/O modules stay sans-I/O: each, imported alone in a fresh interpreter,
loads neither trio nor any project module outside the pure layers (codecs, pure rules, the Raft
log and FSM protocols, serf's coordinate values, the catalog's own pure modules)."""

from __future__ import annotations

import pytest
from process_helpers import imports_of

CATALOG_PURE = [
    "agentrpc.catalog.constants",
    "agentrpc.catalog.go_text",
    "agentrpc.catalog.structs",
    "agentrpc.catalog.watch",
    "agentrpc.catalog.state_store",
    "agentrpc.catalog.fsm",
    "agentrpc.catalog.rules",
    "agentrpc.catalog.leader",
]
ALLOWED = {
    *CATALOG_PURE,
    "agentrpc",
    "agentrpc.catalog",
    "agentrpc.raft",
    "agentrpc.raft.log",
    "agentrpc.raft.fsm",
    "agentrpc.log_protocol",
    "agentrpc.member_status",
    "agentrpc.hostport",
    "agentrpc.gossip",
    "agentrpc.gossip.coordinate",
    "agentrpc.gossip.messages",
}


@pytest.mark.parametrize("module", CATALOG_PURE)
def test_pure_catalog_module_imports_no_trio(module: str) -> None:
    loads_trio, project = imports_of(module)
    assert not loads_trio, f"import {module} loads trio"
    outside = [
        name
        for name in sorted(project)
        if name not in ALLOWED and not name.startswith("agentrpc.protocol")
    ]
    assert not outside, f"import {module} loads modules that are not pure: {outside}"
