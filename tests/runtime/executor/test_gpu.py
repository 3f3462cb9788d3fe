"""The same engine on a CUDA device (skipped without one)."""

from __future__ import annotations

import pytest
import torch
from loomlm.runtime import Engine, SamplingParams

from ..checkpoints import make_checkpoint
from ..helpers import assert_pool_whole, hf_greedy, prompts_of_lengths


@pytest.mark.gpu
def test_greedy_on_cuda_matches_transformers(tmp_path):
    import transformers

    path = make_checkpoint(tmp_path, "qwen3")
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = prompts_of_lengths([5, 30, 17, 44, 9, 60, 2, 21], 512, seed=9)
    params = SamplingParams(max_new_tokens=32, temperature=0, ignore_eos=True)
    with Engine(path, device="cuda", skip_tokenizer_init=True, max_total_tokens=4096) as engine:
        outs = engine.generate(input_ids=prompts, sampling_params=params)
        assert_pool_whole(engine)
    for ids, out in zip(prompts, outs):
        assert out.output_ids == hf_greedy(hf, ids, 32)
