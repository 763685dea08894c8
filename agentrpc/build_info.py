"""What this build of agentrpc is: version, revision and the protocol versions it speaks."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path
from typing import Final


def _version() -> str:
    try:
        return metadata.version("agentrpc")
    except metadata.PackageNotFoundError:  # a source tree that is not installed
        return "0.0.0"


VERSION: Final = _version()

PRERELEASE: Final = "dev"


def _revision() -> str:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return "unknown"
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=8", "HEAD"],
            capture_output=True,
            text=True,
            timeout=2,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


REVISION: Final = _revision()
BUILD_TAG: Final = f"{VERSION}:{REVISION}"
"""The ``build`` member tag: version, then the revision after a colon (the CLI cuts at ':')."""

# Versions advertised in membership (see shared/spec/membership.md, "Versions to advertise").
PROTOCOL_MIN: Final = 1
PROTOCOL_MAX: Final = 5
PROTOCOL_CUR: Final = 2
DELEGATE_MIN: Final = 2
DELEGATE_MAX: Final = 5
DELEGATE_CUR: Final = 4
