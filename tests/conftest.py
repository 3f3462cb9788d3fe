from __future__ import annotations

import os

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Engines in the suite run their forward op by op: compiling a graph costs tens of seconds per
# model shape on CI's two cores. The compiled path has its own tests, which unset this
# (tests/runtime/executor/test_compiled_step.py); they and subprocesses inherit it otherwise.
os.environ.setdefault("LOOMLM_ENFORCE_EAGER", "1")
