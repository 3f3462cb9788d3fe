"""Shared by the weight-update tests: a checkpoint with other weights, and greedy runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from loomlm.runtime import Engine, SamplingParams

from ..checkpoints import hf_model

GREEDY = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)


def other_weights(path: Path, out: Path, seed: int) -> Any:
    """The checkpoint at `path` with every tensor drawn again, saved to `out`; returns the
    transformers model holding them."""
    hf = hf_model(path)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf.parameters():
            scale, shift = (0.08, 0.0) if p.dim() > 1 else (0.3, 1.0)
            p.copy_(torch.randn(p.shape, generator=g) * scale + shift)
    hf.save_pretrained(out)
    return hf


def greedy(engine: Engine, prompts: list[list[int]]) -> list[list[int]]:
    return [o.output_ids for o in engine.generate(input_ids=prompts, sampling_params=GREEDY)]
