"""The forward step as one compiled graph (CPU): equal to transformers, compiled once at
start-up and never again while serving, and an eager fallback when there is no compiler."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from loomlm.runtime import Engine, SamplingParams
from loomlm.runtime.executor import packed_linear
from loomlm.runtime.executor.cpu_kernels import build

from ..checkpoints import hf_model, make_checkpoint
from ..helpers import assert_pool_whole, hf_greedy, hf_logits, our_prompt_logits, prompts_of_lengths

GREEDY_24 = SamplingParams(max_new_tokens=24, temperature=0, ignore_eos=True)
# Inductor compiles C++ too: without a compiler only the fallback test below applies.
needs_compiler = pytest.mark.skipif(not build.compiler_present(), reason="no C++ compiler")


def _compiles() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _aot_compiles() -> int:
    from torch._dynamo.utils import counters

    return int(counters["aot_autograd"]["total"])


@needs_compiler
@pytest.mark.parametrize(
    "name, packed",
    [("llama", True), ("qwen3", False)],  # packed oneDNN products in the graph, or plain ones
)
def test_compiled_step_matches_transformers_and_compiles_only_at_start(
    name, packed, tmp_path, monkeypatch
):
    monkeypatch.delenv("LOOMLM_ENFORCE_EAGER", raising=False)
    if packed:  # the tiny model's layers are far below the size that is packed for speed
        monkeypatch.setattr(packed_linear, "MIN_PACKED_BYTES", 0)
    path = make_checkpoint(tmp_path, name)
    graphs_before, aot_before = _compiles(), _aot_compiles()
    engine = Engine(path, skip_tokenizer_init=True, max_total_tokens=2048)
    try:
        assert engine.runner.model_step.compiled
        if packed:
            assert isinstance(engine.model.layers[0].mlp.down_proj, packed_linear.PackedLinear)
        compiled_at_start = _compiles()
        # Each graph went through AOT autograd once: a float in the model traced as a symbol
        # made dynamo restart its analysis and trace the first graph twice, at every start.
        assert _aot_compiles() - aot_before == compiled_at_start - graphs_before
        hf = hf_model(path)
        ids = prompts_of_lengths([40], 512)[0]
        assert (our_prompt_logits(engine, ids) - hf_logits(hf, ids)).abs().max().item() <= 1e-4
        # batches of 1, 5 and 9 requests: decode steps of every size, prefill chunks, mixes
        for lengths in ([12], [3, 50, 9, 31, 17], [5, 8, 60, 2, 33, 41, 7, 19, 26]):
            prompts = prompts_of_lengths(lengths, 512, seed=len(lengths))
            outs = engine.generate(input_ids=prompts, sampling_params=GREEDY_24)
            for prompt, out in zip(prompts, outs):
                assert out.output_ids == hf_greedy(hf, prompt, 24)
        assert _compiles() == compiled_at_start, "serving compiled a new graph"
        assert_pool_whole(engine)
    finally:
        engine.shutdown()


def test_without_a_compiler_the_engine_warns_once_and_runs_eagerly(tmp_path):
    """No C++ compiler (CXX points at one that always fails, and nothing is cached yet):
    the engine still starts, says why once per part, and generates what the eager path does."""
    path = make_checkpoint(tmp_path, "llama")
    script = textwrap.dedent(
        f"""
        import logging, warnings
        logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
        from loomlm.runtime import Engine
        engine = Engine({str(path)!r}, skip_tokenizer_init=True, max_total_tokens=512)
        params = {{"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}}
        print("COMPILED", engine.runner.model_step.compiled)
        print("IDS", engine.generate(input_ids=[5, 6, 7, 8], sampling_params=params).output_ids)
        engine.shutdown()
        """
    )
    env = {
        **os.environ,
        "CXX": "/bin/false",
        "CC": "/bin/false",
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
        "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions"),
    }
    env.pop("LOOMLM_ENFORCE_EAGER", None)
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "COMPILED False" in run.stdout
    warnings = [line for line in run.stderr.splitlines() if "unavailable" in line]
    assert len(warnings) == 2, run.stderr[-3000:]  # the C++ kernels, the compiled graph
    ids = ast.literal_eval(run.stdout.split("IDS ", 1)[1].strip())  # a printed list of ints
    eager = Engine(path, skip_tokenizer_init=True, max_total_tokens=512, enforce_eager=True)
    try:
        params = {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}
        assert ids == eager.generate(input_ids=[5, 6, 7, 8], sampling_params=params).output_ids
        assert ids == hf_greedy(hf_model(path), [5, 6, 7, 8], 8)
    finally:
        eager.shutdown()


@needs_compiler
def test_engines_in_one_process_compute_with_their_own_weights_and_shapes(tmp_path, monkeypatch):
    """Each engine compiles its own graphs with dynamo's guards on its modules turned off: two
    engines of one shape (other weights) and one of another shape, alive at once and used in
    turn, must each run their own model, and no step after start-up compiles."""
    import shutil

    from safetensors.torch import load_file, save_file

    monkeypatch.delenv("LOOMLM_ENFORCE_EAGER", raising=False)
    monkeypatch.setattr(packed_linear, "MIN_PACKED_BYTES", 0)
    first_path = make_checkpoint(tmp_path, "llama")
    second_path = tmp_path / "llama-other-weights"
    shutil.copytree(first_path, second_path)
    weights = load_file(second_path / "model.safetensors")
    g = torch.Generator().manual_seed(5)
    save_file(
        {
            k: torch.randn(v.shape, generator=g) * 0.08 if v.dim() > 1 else v
            for k, v in weights.items()
        },
        second_path / "model.safetensors",
    )
    paths = [first_path, second_path, make_checkpoint(tmp_path, "qwen3")]
    engines = [Engine(p, skip_tokenizer_init=True, max_total_tokens=512) for p in paths]
    try:
        assert all(e.runner.model_step.compiled for e in engines)
        compiled_at_start = _compiles()
        hfs = [hf_model(p) for p in paths]
        for seed in (11, 12):  # in turn, twice: each engine's graphs stay its own
            prompt = prompts_of_lengths([10], 512, seed=seed)[0]
            for engine, hf in zip(engines, hfs):
                out = engine.generate(input_ids=prompt, sampling_params=GREEDY_24).output_ids
                assert out == hf_greedy(hf, prompt, 24)
        assert _compiles() == compiled_at_start, "serving compiled a new graph"
    finally:
        for engine in engines:
            engine.shutdown()
