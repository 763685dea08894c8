"""The tests run against the installed package, and the package needs no checkout on the
path: ``agentrpc.transports`` and ``agentrpc.cli`` come from the install's mapping of
``transports/`` and ``cli/`` (there are no symlinks)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import agentrpc

REPO_ROOT = Path(__file__).resolve().parents[1]


def _entries() -> list[Path]:
    return [Path(entry or ".").resolve() for entry in sys.path]


def test_the_checkout_is_not_ahead_of_the_installed_package_on_the_path() -> None:
    entries = _entries()
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert site in entries
    if REPO_ROOT in entries:
        assert entries.index(REPO_ROOT) > entries.index(site), sys.path


def test_the_install_provides_every_subpackage_without_the_checkout(tmp_path: Path) -> None:
    # -P and another working directory: nothing of the checkout is on the child's path.
    code = (
        "import agentrpc, agentrpc.transports, agentrpc.cli, agentrpc.cli.main;"
        "print(agentrpc.__version__)"
    )
    done = subprocess.run(
        [sys.executable, "-P", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == agentrpc.__version__
