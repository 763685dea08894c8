"""The sans-I/O layer stays sans-I/O: each codec and pure-rules module, imported alone in a fresh
interpreter, loads neither trio nor any module of the project that is not pure itself.

A failure names the module and what it dragged in; ``python -X importtime -c "import <module>"``
shows the chain.
"""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path

import pytest
from process_helpers import imports_of

import agentrpc.protocol

PROTOCOL_MODULES = sorted(
    f"agentrpc.protocol.{info.name}" for info in pkgutil.iter_modules(agentrpc.protocol.__path__)
)
"""Every module of the agent RPC's codec package, found on disk (a new one is checked too)."""


def _pure_modules_of_the_contract() -> list[str]:
    """The source modules of pyproject.toml's contracts that forbid trio (the codecs and pure
    rules; the Raft storage back ends): one home for the list, which import-linter checks
    statically and this test checks at run time."""
    config = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    names = {
        name
        for contract in contracts
        if contract["type"] == "forbidden" and "trio" in contract["forbidden_modules"]
        for name in contract["source_modules"]
    }
    assert names, "a contract forbids trio"
    return sorted(names - {"agentrpc.protocol"})


PURE_MODULES = sorted({*PROTOCOL_MODULES, *_pure_modules_of_the_contract()})
"""The modules that must import without trio; a pure module may import only these."""

PACKAGES = {"agentrpc"} | {name.rpartition(".")[0] for name in PURE_MODULES}
"""Package ``__init__`` modules the pure ones live in (they must stay light themselves)."""


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_no_trio(module: str) -> None:
    loads_trio, project = imports_of(module)
    assert not loads_trio, f"import {module} loads trio (python -X importtime shows the chain)"
    impure = sorted(project - set(PURE_MODULES) - PACKAGES)
    assert not impure, f"import {module} loads modules that are not pure: {impure}"


def test_the_package_alone_loads_nothing_else() -> None:
    loads_trio, project = imports_of("agentrpc")
    assert not loads_trio
    assert project == {"agentrpc"}


def test_the_package_names_still_resolve() -> None:
    import agentrpc
    from agentrpc.agent import Agent
    from agentrpc.build_info import VERSION
    from agentrpc.client import Client
    from agentrpc.protocol.bodies import Member

    assert agentrpc.Agent is Agent
    assert agentrpc.Client is Client
    assert agentrpc.Member is Member
    assert agentrpc.__version__ == VERSION
    for name in agentrpc.__all__:
        assert getattr(agentrpc, name) is not None
        assert name in dir(agentrpc)
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = agentrpc.no_such_name  # type: ignore[attr-defined]
