#!/usr/bin/env bash
# Set up, then run the quickstart on the built-in TinyStories 260K model.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/python examples/quickstart.py "$@"
