"""The DNS interface's sans-I/O modules stay sans-I/O: each, imported alone in a fresh
interpreter, loads neither trio nor any project module outside the pure layers (the catalog's
pure structs and constants, the log protocol, the defaults)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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

_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps({
    "trio": "trio" in sys.modules,
    "project": sorted(name for name in sys.modules if name.split(".")[0] == "agentrpc"),
}))
"""


@pytest.mark.parametrize("module", DNS_PURE)
def test_pure_dns_module_imports_no_trio(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, module],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert not result["trio"], f"import {module} loads trio"
    outside = [
        name
        for name in result["project"]
        if name not in ALLOWED and not name.startswith("agentrpc.protocol")
    ]
    assert not outside, f"import {module} loads modules that are not pure: {outside}"
