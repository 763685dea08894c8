#!/usr/bin/env bash
# Install everything the test suite needs into .venv, then lint, type-check and test.
# Run from a fresh clone: `bash scripts/test.sh` (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."

# The interop tests need real implementations nobody here wrote: the serf agent, Go with
# Debian's HashiCorp libraries (raft, raft-boltdb, yamux, net-rpc-msgpackrpc, go-msgpack,
# memberlist, serf; built in GOPATH mode from /usr/share/gocode) and dig.
debs=(serf golang-go dnsutils
      golang-github-hashicorp-raft-dev golang-github-hashicorp-raft-boltdb-dev
      golang-github-hashicorp-yamux-dev golang-github-hashicorp-net-rpc-msgpackrpc-dev
      golang-github-hashicorp-go-msgpack-dev golang-github-hashicorp-memberlist-dev
      golang-github-hashicorp-serf-dev)
missing=()
for deb in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "ok installed" || missing+=("$deb")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "error: missing Debian packages (run as root: apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

.venv/bin/ruff check .
.venv/bin/ruff format --check .
bash scripts/typecheck.sh
.venv/bin/python -m pytest "$@"
