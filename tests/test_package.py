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


def test_every_package_directory_is_listed_in_pyproject():
    """setuptools installs only the packages pyproject lists; an editable install finds the
    rest anyway, so a missing entry shows only in a wheel."""
    from pathlib import Path

    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for top, name in (("lang", "loomlm"), ("runtime", "loomlm.runtime")):
        for init in (root / top).rglob("__init__.py"):
            parts = init.parent.relative_to(root / top).parts
            found.add(".".join((name, *parts)))
    assert found == listed
