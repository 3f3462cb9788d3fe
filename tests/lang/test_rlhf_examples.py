"""The RLHF examples (examples/rlhf/) in a shortened form: the plumbing between the trainer
and the engine, in process and with `loomlm serve` synced over gloo. Their full runs, with the
learning curve, are their own commands (`python examples/rlhf/grpo.py`, `ppo.py`). matplotlib,
which draws the curves, is in the test extra: these fail, not skip, without it."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    sys.path.insert(0, str(ROOT / "examples" / "rlhf"))
    spec = importlib.util.spec_from_file_location(
        f"rlhf_{name}", ROOT / "examples" / "rlhf" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("server", [False, True])
def test_grpo_trains_and_syncs_every_step(server, tmp_path):
    argv = ["--steps", "3", "--prompts", "4", "--samples", "4", "--out", str(tmp_path)]
    summary = _load("grpo").main(argv + (["--server"] if server else []))
    rows = _rows(tmp_path / "grpo.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2] and summary["steps"] == 3
    # each rollout came from the weights of the step before
    assert [r["weight_version"] for r in rows] == ["default", "step-1", "step-2"]
    # the engine's logprobs are the trainer's: the first importance ratio is 1
    assert all(abs(r["first_ratio"] - 1) < 1e-3 for r in rows)
    assert (tmp_path / "grpo.png").stat().st_size > 1000


def test_ppo_trains_and_syncs_every_step(tmp_path):
    summary = _load("ppo").main(
        ["--steps", "2", "--prompts", "4", "--samples", "2", "--out", str(tmp_path)]
    )
    rows = _rows(tmp_path / "ppo.jsonl")
    assert [r["weight_version"] for r in rows] == ["default", "step-1"] and summary["steps"] == 2
    assert all(r["value_loss"] >= 0 for r in rows)
    assert (tmp_path / "ppo.png").stat().st_size > 1000
