"""The DNS interface's sans-I/O modules stay sans-I/O: each, imported alone in a fresh
interpreter, loads neither trio nor any project module outside the pure layers (the catalog's
pure structs and constants, the log protocol, the defaults)."""

from __future__ import annotations

import pytest
from process_helpers import imports_of

DNS_PURE = [
    "agentrpc.dns.settings",
    "agentrpc.dns.names",
    "agentrpc.dns.wire",
    "agentrpc.dns.resolver",
]
ALLOWED = {
    *DNS_PURE,
    "agentrpc",
    "agentrpc.dns",
    "agentrpc.catalog",
    "agentrpc.catalog.constants",
    "agentrpc.catalog.go_text",
    "agentrpc.catalog.structs",
    "agentrpc.defaults",
    "agentrpc.hostport",
    "agentrpc.log_protocol",
    "agentrpc.member_status",
}


@pytest.mark.parametrize("module", DNS_PURE)
def test_pure_dns_module_imports_no_trio(module: str) -> None:
    loads_trio, project = imports_of(module)
    assert not loads_trio, f"import {module} loads trio"
    outside = [
        name
        for name in sorted(project)
        if name not in ALLOWED and not name.startswith("agentrpc.protocol")
    ]
    assert not outside, f"import {module} loads modules that are not pure: {outside}"
