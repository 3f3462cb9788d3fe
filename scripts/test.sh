#!/usr/bin/env bash
# Set up, check types (mypy over lang/ and runtime/, configured in pyproject.toml), then run
# the whole test suite (GPU tests skip without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/python -m mypy
.venv/bin/python -m pytest -q "$@"
