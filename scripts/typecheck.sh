#!/usr/bin/env bash
# mypy --strict and the import-linter contracts, on the package as it installs. The tree has no
# symlinks: pyproject's package-dir maps transports/ and cli/ into agentrpc, which neither mypy
# nor import-linter can follow in a checkout, so the package is staged with pip into
# build/typecheck/ and checked there; mypy's paths are mapped back to the sources.
# Run from anywhere: `bash scripts/typecheck.sh` (extra arguments go to mypy).
set -euo pipefail
cd "$(dirname "$0")/.."
stage=build/typecheck
rm -rf "$stage"
.venv/bin/python -m pip install -q --no-deps --no-compile --target "$stage" .
.venv/bin/mypy "$stage/agentrpc" "$@" \
    | sed -e "s#^$stage/agentrpc/transports/#transports/#" \
          -e "s#^$stage/agentrpc/cli/#cli/#" \
          -e "s#^$stage/##"
# import-linter puts the current directory first on sys.path: run it from the stage.
(cd "$stage" && ../../.venv/bin/lint-imports --no-cache --config ../../pyproject.toml)
