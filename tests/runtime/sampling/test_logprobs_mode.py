"""Which distribution a returned logprob is under: "raw" (the model's softmax) or "processed"
(the one the token was drawn from), and the log of the mass top-k / top-p / min-p kept. The
expected values are computed here from the raw logits, independently of the sampler."""

from __future__ import annotations

import pytest
import torch
from loomlm.runtime import Engine, SamplingParams
from loomlm.runtime.executor.sampler import Sampler, SamplingRow

from ..checkpoints import hf_model, make_checkpoint
from ..helpers import prompts_of_lengths


def processed_reference(
    raw_logits: torch.Tensor, p: SamplingParams, prompt: list[int], output: list[int]
) -> tuple[torch.Tensor, float]:
    """(log-distribution sampled from, log of the mass truncation kept) for one row."""
    logits = raw_logits.double().clone()
    counts = torch.zeros_like(logits)
    for t in output:
        counts[t] += 1
    logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
    if p.repetition_penalty != 1.0:
        for t in set(prompt + output):
            v = logits[t]
            logits[t] = v / p.repetition_penalty if v > 0 else v * p.repetition_penalty
    if p.is_greedy:
        return torch.log_softmax(logits, -1), 0.0
    probs = torch.softmax(logits / p.temperature, -1)
    keep = torch.ones_like(probs, dtype=torch.bool)
    if p.min_p > 0:
        keep &= probs >= p.min_p * probs.max()
    order = torch.argsort(probs * keep, descending=True)
    ranked = (probs * keep)[order]
    ahead = ranked.cumsum(0) - ranked
    drop = ahead > p.top_p * ranked.sum()
    if p.top_k > 0:
        drop |= torch.arange(len(ranked)) >= p.top_k
    keep[order[drop]] = False
    kept = probs * keep
    return (kept / kept.sum()).log(), float(kept.sum().log())


CASES = [
    SamplingParams(temperature=0.7, logprobs_mode="processed", return_kept_mass=True),
    SamplingParams(temperature=1.3, top_k=5, logprobs_mode="processed", return_kept_mass=True),
    SamplingParams(temperature=0.9, top_p=0.8, logprobs_mode="processed", return_kept_mass=True),
    SamplingParams(min_p=0.2, logprobs_mode="processed", return_kept_mass=True),
    SamplingParams(
        temperature=0.8,
        top_p=0.9,
        top_k=20,
        frequency_penalty=0.5,
        presence_penalty=0.3,
        repetition_penalty=1.2,
        logprobs_mode="processed",
        return_kept_mass=True,
    ),  # fmt: skip
    SamplingParams(temperature=0, repetition_penalty=1.3, logprobs_mode="processed"),
    SamplingParams(temperature=0.6, top_k=3, return_kept_mass=True),  # raw logprobs
]


def test_the_sampler_returns_each_rows_logprob_under_its_mode():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(len(CASES), 50, generator=g) * 3
    rows = [
        SamplingRow(
            p, seed=i, prompt_ids=[1, 4, 9], output_ids=[4, 7, 7], suppressed_ids=frozenset()
        )
        for i, p in enumerate(CASES)
    ]
    out = Sampler()(logits, rows, want_logprobs=True, top_k_logprobs=3)
    assert (
        out.logprobs is not None and out.kept_log_mass is not None and out.top_logprobs is not None
    )
    raw = torch.log_softmax(logits, -1)
    for i, (p, row) in enumerate(zip(CASES, rows)):
        token = int(out.next_ids[i])
        if p.logprobs_mode == "raw":
            table, mass = raw[i].double(), None
        else:
            table, mass = processed_reference(logits[i], p, row.prompt_ids, row.output_ids)
        assert table[token] > float("-inf"), f"row {i} sampled a token its distribution excludes"
        assert out.logprobs[i].item() == pytest.approx(table[token].item(), abs=1e-5)
        assert out.top_logprobs[i].tolist() == pytest.approx(
            table.topk(3).values.tolist(), abs=1e-5
        )
        if p.return_kept_mass:
            expected = processed_reference(logits[i], p, row.prompt_ids, row.output_ids)[1]
            assert out.kept_log_mass[i].item() == pytest.approx(expected, abs=1e-5)
            if p.top_k > 0 or p.top_p < 1 or p.min_p > 0:
                assert expected < 0  # something was cut
        elif mass is not None:
            assert out.kept_log_mass[i].item() == 0.0


def test_engine_rollout_logprobs_in_both_modes_match_a_transformers_forward(tmp_path):
    """Each sampled token's logprob, raw and processed, from the engine's rollout equals what
    a trainer computes with transformers over prompt + completion."""
    path = make_checkpoint(tmp_path, "qwen3")
    hf = hf_model(path)
    prompts = prompts_of_lengths([7, 19, 12], 512, seed=3)
    with Engine(path, skip_tokenizer_init=True, max_total_tokens=2048) as engine:
        for mode in ("raw", "processed"):
            params = SamplingParams(
                max_new_tokens=16, temperature=0.8, top_p=0.85, top_k=40, seed=11,
                ignore_eos=True, logprobs_mode=mode, return_kept_mass=True,
            )  # fmt: skip
            outs = engine.generate(input_ids=prompts, sampling_params=params, return_logprob=True)
            for prompt, out in zip(prompts, outs):
                ids = prompt + out.output_ids
                with torch.no_grad():
                    logits = hf(torch.tensor([ids])).logits[0].float()
                assert out.output_kept_log_mass is not None
                for k, (lp, token, _) in enumerate(out.output_token_logprobs):
                    row = logits[len(prompt) - 1 + k]
                    table, mass = processed_reference(row, params, prompt, out.output_ids[:k])
                    if mode == "raw":
                        assert lp == pytest.approx(
                            torch.log_softmax(row, -1)[token].item(), abs=1e-5
                        )
                    else:
                        assert lp == pytest.approx(table[token].item(), abs=1e-4)
                    assert out.output_kept_log_mass[k] == pytest.approx(mass, abs=1e-4)
                assert (
                    out.to_dict()["meta_info"]["output_token_kept_log_mass"]
                    == out.output_kept_log_mass
                )


def test_bad_logprobs_mode_is_refused():
    with pytest.raises(ValueError, match="logprobs_mode"):
        SamplingParams(logprobs_mode="processed_logprobs")
    with pytest.raises(ValueError, match="return_kept_mass"):
        SamplingParams(return_kept_mass="yes")  # type: ignore[arg-type]
