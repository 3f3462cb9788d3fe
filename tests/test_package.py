from __future__ import annotations

import subprocess
import sys


def test_lang_does_not_import_torch():
    code = (
        "import sys, loomlm, loomlm.backends.engine_backend, loomlm.bench.program_workloads\n"
        "@loomlm.function\n"
        "def f(s): s += 'x' + loomlm.gen('y')\n"
        "assert 'torch' not in sys.modules, 'torch imported'; print(loomlm.__version__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_default_model_ships_with_licence_and_provenance():
    from loomlm.runtime.executor.models.loader import DEFAULT_MODEL_DIR

    for name in ("LICENSE", "README.md", "config.json", "model.safetensors", "tokenizer.json"):
        assert (DEFAULT_MODEL_DIR / name).is_file(), name
