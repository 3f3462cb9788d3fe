"""Rollout logprobs equal the trainer's: every sampled token's raw logprob, from the engine's
rollout with n samples per prompt, the prefix cache on and prompts split by chunked prefill,
equals a transformers forward pass over prompt + completion (float32, 1e-5)."""

from __future__ import annotations

import pytest
import torch
from loomlm.runtime import Engine, SamplingParams

from ..checkpoints import default_model_dir, hf_model, make_checkpoint
from ..helpers import prompts_of_lengths


@pytest.mark.parametrize("name", ["default", "llama", "qwen3"])
def test_rollout_logprobs_equal_a_transformers_forward(name, tmp_path):
    path = default_model_dir() if name == "default" else make_checkpoint(tmp_path, name)
    hf = hf_model(path)
    prompts = prompts_of_lengths([5, 37, 60, 18], 512, seed=7)
    prompts.append(prompts[2][:45] + prompts[0][1:])  # shares 45 tokens with another: a cache hit
    params = SamplingParams(max_new_tokens=24, temperature=1.0, n=2, seed=3, ignore_eos=True)
    with Engine(
        path,
        skip_tokenizer_init=True,
        max_total_tokens=4096,
        chunked_prefill_size=16,
        max_prefill_tokens=32,
    ) as engine:
        engine.generate(input_ids=prompts[2], sampling_params={"max_new_tokens": 1})  # cached
        outs = engine.generate(input_ids=prompts, sampling_params=params, return_logprob=True)
    assert len(outs) == 2 * len(prompts)
    assert any(o.cached_tokens >= 45 for o in outs)
    worst = 0.0
    for i, out in enumerate(outs):
        prompt = prompts[i // 2]
        ids = prompt + out.output_ids
        with torch.no_grad():
            logprobs = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1)
        assert [t for _, t, _ in out.output_token_logprobs] == out.output_ids
        for k, (lp, token, _) in enumerate(out.output_token_logprobs):
            worst = max(worst, abs(lp - logprobs[len(prompt) - 1 + k, token].item()))
    assert worst <= 1e-5, f"largest difference {worst:.2e}"
