#!/usr/bin/env bash
# Creates .venv (once) and installs loomlm with its test tools into it.
#
# torch: if the venv already has one (e.g. a CUDA build you installed), it is kept. Otherwise
# a machine with an NVIDIA driver gets the default (CUDA) build, and a machine without one
# gets torch==2.13.0, which on CPU-only project machines resolves to a local CPU wheel instead
# of gigabytes of CUDA packages. Set LOOMLM_TORCH to choose another requirement.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ -n "${LOOMLM_TORCH:-}" ]; then spec=$LOOMLM_TORCH
  elif command -v nvidia-smi >/dev/null 2>&1; then spec=torch
  else spec=torch==2.13.0
  fi
  echo "installing $spec"
  .venv/bin/pip install --quiet "$spec"
fi
.venv/bin/pip install --quiet -e ".[test]"
# SGLang's frontend client, for the server's compatibility tests. Its wheel declares the
# whole SGLang server stack (CUDA kernels...), so it goes in without dependencies; the few its
# client imports are in the `test` extra. Detected by its installed metadata, not by importing
# it: an import fails whenever one of those is missing, and reinstalling would not help.
if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('sglang') != '0.5.23')" 2>/dev/null; then
  .venv/bin/pip install --quiet --no-deps "sglang==0.5.23"
fi
