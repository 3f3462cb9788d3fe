"""Batch-invariant mode (`deterministic=True`): a request's tokens and logprobs are bitwise the
same alone, inside a batch of others, after a cached prefix, and with its prompt split into
chunks differently."""

from __future__ import annotations

import pytest
from loomlm.runtime import Engine, SamplingParams
from loomlm.runtime.executor.cpu_kernels import build

from ..checkpoints import default_model_dir, make_checkpoint
from ..helpers import prompts_of_lengths

needs_kernels = pytest.mark.skipif(not build.compiler_present(), reason="no C++ compiler")
PARAMS = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=3, ignore_eos=True)


def _run(engine: Engine, prompts: list[list[int]]) -> list[tuple[list[int], list, list]]:
    outs = engine.generate(
        input_ids=prompts, sampling_params=PARAMS, return_logprob=True, top_logprobs_num=3
    )
    return [(o.output_ids, o.output_token_logprobs, o.output_top_logprobs) for o in outs]


def _engine(path, dtype: str, **options) -> Engine:
    return Engine(
        path, dtype=dtype, skip_tokenizer_init=True, max_total_tokens=4096, deterministic=True,
        **options,
    )  # fmt: skip


@needs_kernels
@pytest.mark.parametrize(
    "name, dtype, compiled",
    [
        ("default", "float32", False),  # heads of 8, tied embeddings: the head packed too
        ("qwen2", "float32", False),
        ("llama", "float32", False),
        ("qwen3", "bfloat16", False),
        ("llama", "float32", True),  # through the compiled forward graphs
    ],
)
def test_a_request_gets_the_same_bits_alone_batched_cached_and_chunked(
    name, dtype, compiled, tmp_path, monkeypatch
):
    if compiled:
        monkeypatch.delenv("LOOMLM_ENFORCE_EAGER", raising=False)
    path = default_model_dir() if name == "default" else make_checkpoint(tmp_path, name)
    prompts = prompts_of_lengths([7, 41, 3, 66, 19, 28], 512, seed=1)
    prompts[4] = prompts[3][:50] + prompts[4]  # a prefix shared with another prompt
    with _engine(path, dtype) as engine:
        alone = []
        for p in prompts:
            engine.flush_cache()
            alone += _run(engine, [p])
        engine.flush_cache()
        assert _run(engine, prompts) == alone  # one batch, prompts and decodes mixed
        assert _run(engine, prompts) == alone  # again, every prompt now cached
        assert _run(engine, prompts[::-1]) == alone[::-1]  # another order
    # prompts computed in chunks of 16 tokens, interleaved with the others' decodes
    with _engine(path, dtype, chunked_prefill_size=16, max_prefill_tokens=16) as chunked:
        assert _run(chunked, prompts) == alone


def test_deterministic_mode_needs_the_kernels(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOMLM_LINEAR_KERNEL", "onednn")  # the row-wise kernel switched off
    with pytest.raises(ValueError, match="deterministic: needs the C\\+\\+ linear kernel"):
        _engine(make_checkpoint(tmp_path, "llama"), "float32")
