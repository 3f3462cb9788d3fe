"""Weight updates of a running engine (RLHF refit), in process: from a trainer's Hugging Face
tensors and from disk. After an update the engine must generate exactly what a fresh engine
loaded with the new weights generates (and transformers with them); a bad update must leave
the old weights whole; KV computed with the old weights must never be read again unless the
caller keeps the cache."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
from loomlm.runtime import Engine, SamplingParams
from loomlm.runtime.executor import packed_linear
from loomlm.runtime.executor.cpu_kernels import blocked_linear

from ..checkpoints import hf_model, make_checkpoint
from ..helpers import assert_pool_whole, hf_greedy, prompts_of_lengths
from .refit import GREEDY, greedy, other_weights


@pytest.mark.parametrize(
    "name, layout",
    [
        ("llama", "plain"),
        ("llama", "blocked"),  # our kernel's column blocks, written in place
        ("llama", "onednn"),  # oneDNN's opaque packing, read back and packed again
        ("qwen3", "plain"),  # q/k norms
        ("qwen2", "blocked"),  # qkv biases, tied embeddings
        ("qwen2", "deterministic"),  # the tied head's packed copy follows the embedding
    ],
)
def test_update_from_tensor_generates_what_a_fresh_engine_of_the_new_weights_does(
    name, layout, tmp_path, monkeypatch
):
    options = {"deterministic": True} if layout == "deterministic" else {}
    if layout not in ("plain", "deterministic"):
        if layout == "blocked" and not blocked_linear.supports(torch.float32):
            pytest.skip("the column-blocked kernel does not run here")
        if layout == "onednn":
            monkeypatch.setenv("LOOMLM_LINEAR_KERNEL", "onednn")
            if not packed_linear.onednn_packing_works(torch.float32):
                pytest.skip("no oneDNN packing here")
        monkeypatch.setattr(packed_linear, "MIN_PACKED_BYTES", 0)
    path = make_checkpoint(tmp_path, name)
    new = other_weights(path, tmp_path / "new", seed=3)
    prompts = prompts_of_lengths([9, 23, 4], 512, seed=1)
    if layout == "deterministic" and not blocked_linear.supports(torch.float32):
        pytest.skip("the column-blocked kernel does not run here")
    engine = Engine(path, skip_tokenizer_init=True, max_total_tokens=1024, **options)
    fresh = Engine(tmp_path / "new", skip_tokenizer_init=True, max_total_tokens=1024, **options)
    try:
        if layout == "deterministic":
            assert isinstance(engine.model.tied_head, packed_linear.PackedLinear)
        elif layout != "plain":
            assert isinstance(engine.model.layers[0].mlp.down_proj, packed_linear.PackedLinear)
            assert engine.model.layers[0].mlp.down_proj.blocked == (layout == "blocked")
        before = engine.generate(input_ids=prompts[0], sampling_params=GREEDY)
        assert before.weight_version == "default" == engine.get_weight_version()
        assert engine.update_weights_from_tensor(list(new.named_parameters())) == "1"
        assert engine.get_weight_version() == "1"
        outs = engine.generate(input_ids=prompts, sampling_params=GREEDY)
        assert [o.output_ids for o in outs] == greedy(fresh, prompts)
        assert [o.output_ids for o in outs] == [hf_greedy(new, p, 12) for p in prompts]
        assert {o.weight_version for o in outs} == {"1"}
        assert outs[0].to_dict()["meta_info"]["weight_version"] == "1"
        assert_pool_whole(engine)
    finally:
        engine.shutdown()
        fresh.shutdown()


def test_a_partial_update_in_another_dtype_changes_only_those_weights(tmp_path):
    """One projection of one layer, sent in bfloat16 to a float32 engine: the engine then
    equals the old model with just that projection replaced (as bfloat16 values)."""
    path = make_checkpoint(tmp_path, "llama")
    ref = hf_model(path)
    k_proj = ref.model.layers[1].self_attn.k_proj.weight
    new_k = (torch.randn(k_proj.shape, generator=torch.Generator().manual_seed(9)) * 0.1).bfloat16()
    with torch.no_grad():
        k_proj.copy_(new_k.float())
    prompts = prompts_of_lengths([15, 6], 512, seed=2)
    with Engine(path, skip_tokenizer_init=True, max_total_tokens=1024) as engine:
        version = engine.update_weights_from_tensor(
            {"model.layers.1.self_attn.k_proj.weight": new_k}, weight_version="step-7"
        )
        assert version == "step-7" == engine.get_weight_version()
        assert greedy(engine, prompts) == [hf_greedy(ref, p, 12) for p in prompts]


@pytest.mark.parametrize(
    "named, message",
    [
        ([("model.layers.0.self_attn.q_proj.weight", "x")], r"expected a torch.Tensor"),
        (
            [("model.layers.9.mlp.up_proj.weight", torch.zeros(128, 64))],
            r"not a weight of this model",
        ),
        ([("layers.0.mlp.up_proj.weight", torch.zeros(128, 64))], r"Hugging Face parameter names"),
        (
            [("model.layers.0.mlp.up_proj.weight", torch.zeros(64, 128))],
            r"shape \[64, 128\].*\[128, 64\]",
        ),
        ([("model.norm.weight", torch.zeros(64, dtype=torch.int64))], r"floating-point"),
        (
            [("model.norm.weight", torch.ones(64)), ("model.norm.weight", torch.ones(64))],
            r"given twice",
        ),
    ],
)
def test_a_bad_update_is_refused_whole_and_the_old_weights_stay(named, message, tmp_path):
    path = make_checkpoint(tmp_path, "llama")
    prompts = prompts_of_lengths([11], 512, seed=4)
    with Engine(path, skip_tokenizer_init=True, max_total_tokens=1024) as engine:
        before = greedy(engine, prompts)
        # good entries first: they must not be written when a later one is bad
        good = [("model.embed_tokens.weight", torch.zeros(512, 64))]
        with pytest.raises(ValueError, match=message):
            engine.update_weights_from_tensor(good + named)
        assert greedy(engine, prompts) == before
        assert engine.get_weight_version() == "default"
        with pytest.raises(ValueError, match="weight_version"):
            engine.update_weights_from_tensor(good, weight_version=3)  # type: ignore[arg-type]


def test_the_prefix_cache_is_flushed_by_an_update_unless_the_caller_keeps_it(tmp_path):
    path = make_checkpoint(tmp_path, "llama")
    new = other_weights(path, tmp_path / "new", seed=5)
    prompt = prompts_of_lengths([40], 512, seed=6)[0]
    params = list(new.named_parameters())
    with Engine(path, skip_tokenizer_init=True, max_total_tokens=1024) as engine:
        engine.generate(input_ids=prompt, sampling_params=GREEDY)
        assert engine.generate(input_ids=prompt, sampling_params=GREEDY).cached_tokens > 0
        engine.update_weights_from_tensor(params)
        out = engine.generate(input_ids=prompt, sampling_params=GREEDY)
        assert out.cached_tokens == 0  # nothing computed with the old weights was read
        assert out.output_ids == hf_greedy(new, prompt, 12)
        engine.update_weights_from_tensor(params, flush_cache=False)
        assert engine.generate(input_ids=prompt, sampling_params=GREEDY).cached_tokens > 0
        assert_pool_whole(engine)


def test_an_update_while_requests_run_never_lets_their_old_kv_be_shared(tmp_path):
    """Requests in flight at the update finish (with the new weights from then on); the KV
    they computed before it is not handed to the cache, and nothing leaks."""
    path = make_checkpoint(tmp_path, "llama")
    new = other_weights(path, tmp_path / "new", seed=7)
    # distinct first tokens: no prompt is a cached prefix of another
    prompts = [
        [100 + i] + p[1:] for i, p in enumerate(prompts_of_lengths([30, 30, 30], 512, seed=8))
    ]
    long = SamplingParams(max_new_tokens=200, temperature=0, ignore_eos=True)
    with Engine(path, skip_tokenizer_init=True, max_total_tokens=2048) as engine:
        engine.generate(input_ids=prompts[0], sampling_params=GREEDY)  # cached, unlocked
        result: dict[str, Any] = {}
        other = threading.Thread(
            target=lambda: result.update(
                out=engine.generate(input_ids=prompts[2], sampling_params=long)
            )
        )
        other.start()
        stream = engine.stream(input_ids=prompts[1], sampling_params=long)
        chunks = [next(stream)]  # running now, holding its KV (as the other one is)
        engine.update_weights_from_tensor(list(new.named_parameters()))
        chunks.extend(stream)
        other.join()
        assert chunks[-1].output is not None and chunks[-1].output.weight_version == "1"
        assert result["out"].weight_version == "1"
        for prompt in prompts:  # none of the three prompts is served from the cache
            out = engine.generate(input_ids=prompt, sampling_params=GREEDY)
            assert out.cached_tokens == 0
            assert out.output_ids == hf_greedy(new, prompt, 12)
        assert_pool_whole(engine)


def test_update_from_disk_and_its_errors(tmp_path):
    path = make_checkpoint(tmp_path, "llama")
    new = other_weights(path, tmp_path / "new", seed=11)
    prompts = prompts_of_lengths([13, 27], 512, seed=12)
    with Engine(path, skip_tokenizer_init=True, max_total_tokens=1024) as engine:
        assert engine.update_weights_from_disk(tmp_path / "new", weight_version="v2") == "v2"
        assert greedy(engine, prompts) == [hf_greedy(new, p, 12) for p in prompts]
        with pytest.raises(ValueError, match="model_path"):
            engine.update_weights_from_disk(tmp_path / "missing")
        other_shape = make_checkpoint(tmp_path, "qwen3")  # head_dim 32: other q/k/v shapes
        with pytest.raises(
            ValueError, match=r"model_path: .*shape|model_path: the checkpoint lacks"
        ):
            engine.update_weights_from_disk(other_shape)
        assert engine.get_weight_version() == "v2"
        assert greedy(engine, prompts) == [hf_greedy(new, p, 12) for p in prompts]


def test_fifty_updates_leak_no_slot(tmp_path):
    path = make_checkpoint(tmp_path, "llama")
    hf = hf_model(path)
    params = [(n, p.detach().clone()) for n, p in hf.named_parameters()]
    prompts = prompts_of_lengths([20, 9], 512, seed=13)
    with Engine(path, skip_tokenizer_init=True, max_total_tokens=1024) as engine:
        expected = greedy(engine, prompts)
        for i in range(50):
            engine.generate(input_ids=prompts, sampling_params=GREEDY)
            engine.update_weights_from_tensor(params, flush_cache=i % 2 == 0)
        assert engine.get_weight_version() == "50"
        assert greedy(engine, prompts) == expected  # the same weights, written 50 times
        assert_pool_whole(engine)
