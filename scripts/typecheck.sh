#!/usr/bin/env bash
# mypy --strict and the import-linter contracts, on the package as it installs. The tree has no
# symlinks: pyproject's package-dir maps transports/ and cli/ into agentrpc, which neither mypy
# nor import-linter can follow in a checkout, so the package is staged with pip into
# build/typecheck.*/ and checked there; mypy's paths are mapped back to the sources.
# Run from anywhere: `bash scripts/typecheck.sh` (extra arguments go to mypy).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# One stage per run, so that runs side by side never see each other's half-built stage.
mkdir -p build
stage=$(mktemp -d "$root/build/typecheck.XXXXXX")
trap 'rm -rf "$stage"' EXIT
rel=${stage#"$root/"}  # mypy prints paths relative to the current directory
.venv/bin/python -m pip install -q --no-deps --no-compile --target "$stage" .
.venv/bin/mypy "$stage/agentrpc" "$@" \
    | sed -e "s#^\($stage\|$rel\)/agentrpc/transports/#transports/#" \
          -e "s#^\($stage\|$rel\)/agentrpc/cli/#cli/#" \
          -e "s#^\($stage\|$rel\)/##"
# The benchmarks, against the staged package (a checkout's agentrpc/ lacks transports and cli).
mkdir "$stage/faces"
cp -r benchmarks "$stage/faces/benchmarks"
(cd "$stage/faces" && MYPYPATH="$stage" "$root/.venv/bin/mypy" --config-file "$root/pyproject.toml" benchmarks "$@")
# import-linter puts the current directory first on sys.path: run it from the stage.
(cd "$stage" && "$root/.venv/bin/lint-imports" --no-cache "$root/pyproject.toml")
