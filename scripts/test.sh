#!/usr/bin/env bash
# Install everything the test suite needs into .venv, then lint, type-check and test.
# Run from a fresh clone: `bash scripts/test.sh` (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."

# The interop tests need the real serf agent (Debian package `serf`).
if ! command -v serf >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq serf >/dev/null
    else
        echo "note: 'serf' is not installed (apt-get install serf); its interop tests will skip" >&2
    fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

.venv/bin/ruff check .
.venv/bin/ruff format --check .
bash scripts/typecheck.sh
.venv/bin/python -m pytest "$@"
