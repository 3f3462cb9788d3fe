"""The examples and notebooks run, on the default model, as a user would run them."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ["quickstart", "json_extraction", "tree_of_thought", "react_agent", "batch_eval"]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(name, engine, capsys):
    _load(name).main(engine)
    out = capsys.readouterr().out
    assert out.strip()
    if name == "json_extraction":
        records = [
            json.loads(line.split("-> ", 1)[1]) for line in out.splitlines() if "-> " in line
        ]
        assert len(records) == 4 and all(
            set(r) == {"name", "animal", "age", "happy"} for r in records
        )
    if name == "react_agent":
        assert "Observation 1:" in out  # a Python tool was called and its result read back
    if name == "batch_eval":
        assert "accuracy:" in out


def test_the_quickstart_script_runs_from_a_fresh_process():
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "The moral of the story is" in done.stdout and "32 programs" in done.stdout


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_executes(path):
    # the test extra installs both: a missing one is a broken set-up, so it fails here
    import nbclient
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": path.parent}}
    ).execute()  # raises CellExecutionError on any failing cell
    streamed = [c for c in notebook.cells if c.cell_type == "code" and "text_iter" in c.source]
    assert streamed and any(o.get("text") for o in streamed[0].outputs)
