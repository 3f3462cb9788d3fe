"""Every supported architecture matches Hugging Face transformers on the same weights."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from loomlm.runtime import Engine, SamplingParams

from ..checkpoints import VARIANTS, default_model_dir, hf_model, make_checkpoint
from ..helpers import assert_pool_whole, hf_greedy, hf_logits, our_prompt_logits, prompts_of_lengths

GREEDY_32 = SamplingParams(max_new_tokens=32, temperature=0, ignore_eos=True)
LENGTHS = [3, 17, 40, 9, 64, 1, 25, 33, 50]


@pytest.fixture(scope="module", params=["tinystories-260k", *VARIANTS])
def variant(request, tmp_path_factory):
    if request.param == "tinystories-260k":  # the shipped, genuinely pretrained model
        path = default_model_dir()
    else:
        path = make_checkpoint(tmp_path_factory.mktemp("ckpt"), request.param)
    engine = Engine(path, skip_tokenizer_init=True, max_total_tokens=4096)
    yield request.param, path, hf_model(path), engine
    engine.shutdown()


def test_prompt_logits_match(variant):
    _, _, hf, engine = variant
    ids = prompts_of_lengths([48], 512)[0]
    diff = (our_prompt_logits(engine, ids) - hf_logits(hf, ids)).abs().max().item()
    assert diff <= 1e-4


def test_prompt_logprobs_through_engine_match(variant):
    _, _, hf, engine = variant
    ids = prompts_of_lengths([30], 512, seed=3)[0]
    out = engine.generate(
        input_ids=ids,
        sampling_params={"max_new_tokens": 0},
        return_logprob=True,
        logprob_start_len=0,
    )
    ref = torch.log_softmax(hf_logits(hf, ids), -1)
    assert out.input_token_logprobs[0][0] is None
    ours = torch.tensor([e[0] for e in out.input_token_logprobs[1:]])
    expected = ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    assert (ours - expected).abs().max().item() <= 1e-4


def test_prompt_logprobs_from_a_middle_position_in_a_batch_match(variant):
    """Past the last layer's attention the model runs only the rows that need logits: here a
    suffix of each prompt, from a middle position, all prompts in one step."""
    _, _, hf, engine = variant
    prompts = prompts_of_lengths([30, 9, 50], 512, seed=5)
    outs = engine.generate(
        input_ids=prompts,
        sampling_params={"max_new_tokens": 4, "temperature": 0, "ignore_eos": True},
        return_logprob=True,
        logprob_start_len=6,
    )
    for ids, out in zip(prompts, outs):
        assert out.output_ids == hf_greedy(hf, ids, 4)
        ref = torch.log_softmax(hf_logits(hf, ids), -1)
        ours = torch.tensor([e[0] for e in out.input_token_logprobs[1:]])
        expected = ref[torch.arange(6, len(ids) - 1), torch.tensor(ids[7:])]
        assert (ours - expected).abs().max().item() <= 1e-4


def test_greedy_single_request_matches(variant):
    _, _, hf, engine = variant
    ids = prompts_of_lengths([12], 512, seed=1)[0]
    assert engine.generate(input_ids=ids, sampling_params=GREEDY_32).output_ids == hf_greedy(
        hf, ids, 32
    )


def test_greedy_batch_of_different_lengths_matches(variant):
    _, _, hf, engine = variant
    prompts = prompts_of_lengths(LENGTHS, 512, seed=2)
    outs = engine.generate(input_ids=prompts, sampling_params=GREEDY_32)
    for ids, out in zip(prompts, outs):
        assert out.output_ids == hf_greedy(hf, ids, 32)


def test_greedy_staggered_arrivals_match(variant):
    """Requests join a batch that is already decoding, each at a different step."""
    _, _, hf, engine = variant
    prompts = prompts_of_lengths(LENGTHS, 512, seed=4)
    results: dict[int, list[int]] = {}

    def submit(i: int) -> None:
        time.sleep(0.004 * i)
        results[i] = engine.generate(input_ids=prompts[i], sampling_params=GREEDY_32).output_ids

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, ids in enumerate(prompts):
        assert results[i] == hf_greedy(hf, ids, 32)
    assert_pool_whole(engine)


def test_sliding_window_is_applied(tmp_path):
    """Same weights with and without a window: past the window the logits must differ."""
    windowed = Engine(
        make_checkpoint(tmp_path, "mistral-window"), skip_tokenizer_init=True, max_total_tokens=512
    )
    full = Engine(
        make_checkpoint(tmp_path, "mistral"), skip_tokenizer_init=True, max_total_tokens=512
    )
    ids = prompts_of_lengths([30], 512)[0]
    a, b = our_prompt_logits(windowed, ids), our_prompt_logits(full, ids)
    assert torch.allclose(a[:8], b[:8], atol=1e-5)  # inside the window: identical
    assert (a[20:] - b[20:]).abs().max() > 1e-3
    windowed.shutdown()
    full.shutdown()


def test_default_model_matches_hf():
    from transformers import AutoTokenizer

    engine = Engine()
    hf = hf_model(engine.model_dir)
    tok = AutoTokenizer.from_pretrained(engine.model_dir)
    prompts = [
        "Once upon a time",
        "The little dog",
        "Lily and Tom went to the park. They",
        "One day",
        "Sam had a red ball.",
        "The sun",
        "Mom said",
        "A big tree",
    ]
    outs = engine.generate(prompts, {"max_new_tokens": 32, "temperature": 0})
    for prompt, out in zip(prompts, outs):
        ids = tok(prompt).input_ids
        ref = hf_greedy(hf, ids, 32, eos=engine.model_config.eos_token_ids)
        assert out.output_ids == ref
        assert out.prompt_tokens == len(ids)
    ids = tok(prompts[2]).input_ids
    assert (our_prompt_logits(engine, ids) - hf_logits(hf, ids)).abs().max().item() <= 1e-4
    engine.shutdown()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoints(tmp_path, dtype):
    """Half-precision weights load in their own dtype and track transformers closely."""
    path = make_checkpoint(tmp_path, "qwen2", dtype=dtype)
    engine = Engine(path, skip_tokenizer_init=True, max_total_tokens=1024)
    assert engine.dtype == dtype  # "auto" follows the checkpoint
    hf = hf_model(path, dtype)
    ids = prompts_of_lengths([24], 512)[0]
    ours, ref = our_prompt_logits(engine, ids), hf_logits(hf, ids)
    assert (ours - ref).abs().max().item() < 0.05 * ref.abs().max().item()
    assert (ours.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9
    engine.shutdown()


def test_sharded_checkpoint_loads(tmp_path):
    path = make_checkpoint(tmp_path, "llama", shard=True)
    assert (path / "model.safetensors.index.json").exists()
    engine = Engine(path, skip_tokenizer_init=True, max_total_tokens=512)
    ids = prompts_of_lengths([20], 512)[0]
    assert (our_prompt_logits(engine, ids) - hf_logits(hf_model(path), ids)).abs().max() <= 1e-4
    engine.shutdown()


def test_float32_engine_over_bfloat16_checkpoint(tmp_path):
    path = make_checkpoint(tmp_path, "llama", dtype=torch.bfloat16)
    engine = Engine(path, dtype="float32", skip_tokenizer_init=True, max_total_tokens=512)
    assert engine.model.embed_tokens.weight.dtype == torch.float32
    ids = prompts_of_lengths([16], 512)[0]
    ref = hf_logits(hf_model(path, torch.float32), ids)
    assert (our_prompt_logits(engine, ids) - ref).abs().max() <= 1e-4
    engine.shutdown()


def test_greedy_matches_through_the_grouped_reference_decode(variant, monkeypatch):
    """Where the C++ kernel is not used (GPU, no compiler), decodes gather padded blocks,
    grouped by length when large. Tiny models never reach that on their own: force the
    reference path and the grouping, and compare with transformers again."""
    from loomlm.runtime.executor.attention import paged_decode, torch_backend

    _, _, hf, engine = variant
    monkeypatch.setattr(torch_backend, "LARGE_GATHER_BYTES", 0)
    monkeypatch.setattr(paged_decode, "kernel_available", lambda device, head_dim: False)
    monkeypatch.setattr(engine.runner.attention, "_kernel", False)
    prompts = prompts_of_lengths([3, 60, 9, 33, 17, 48, 2, 25], 512, seed=8)
    outs = engine.generate(input_ids=prompts, sampling_params=GREEDY_32)
    for ids, out in zip(prompts, outs):
        assert out.output_ids == hf_greedy(hf, ids, 32)


def test_a_step_split_into_several_forwards_matches(variant, monkeypatch):
    """On CPU a step over many prompt tokens runs as several forwards of whole requests.
    Split every step into pieces of at most 40 tokens (a 64-token prompt alone) and compare
    the prompts' logprobs and the greedy tokens with transformers again."""
    from loomlm.runtime.executor import model_runner

    _, _, hf, engine = variant
    monkeypatch.setattr(model_runner, "CPU_FORWARD_TOKENS", 40)
    forwards = []
    real_step = engine.runner.model_step
    monkeypatch.setattr(
        engine.runner,
        "model_step",
        lambda ids, *rest: forwards.append(len(ids)) or real_step(ids, *rest),
    )
    prompts = prompts_of_lengths([20, 64, 9, 33, 17, 30, 2], 512, seed=9)
    outs = engine.generate(
        input_ids=prompts, sampling_params=GREEDY_32, return_logprob=True, logprob_start_len=0
    )
    # The first step holds all 175 prompt tokens: unsplit, one forward would take them all.
    assert 64 in forwards and all(n <= 40 for n in forwards if n != 64)
    for ids, out in zip(prompts, outs):
        assert out.output_ids == hf_greedy(hf, ids, 32)
        ref = torch.log_softmax(hf_logits(hf, ids), -1)
        ours = torch.tensor([e[0] for e in out.input_token_logprobs[1:]])
        expected = ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
        assert (ours - expected).abs().max().item() <= 1e-4
    assert_pool_whole(engine)


def test_split_by_tokens_keeps_order_and_whole_items():
    from loomlm.runtime.executor.model_runner import ScheduledItem, split_by_tokens

    def items(*sizes: int) -> list[ScheduledItem]:
        return [ScheduledItem(None, 0, n, True) for n in sizes]  # type: ignore[arg-type]

    def sizes(groups: list[list[ScheduledItem]]) -> list[list[int]]:
        return [[i.end for i in g] for g in groups]

    assert sizes(split_by_tokens(items(5, 5, 5), None)) == [[5, 5, 5]]
    assert sizes(split_by_tokens(items(5, 5, 5), 10)) == [[5, 5], [5]]
    assert sizes(split_by_tokens(items(30, 1, 1, 12, 3), 10)) == [[30], [1, 1], [12], [3]]
    assert sizes(split_by_tokens(items(1, 1, 8, 1), 10)) == [[1, 1, 8], [1]]
