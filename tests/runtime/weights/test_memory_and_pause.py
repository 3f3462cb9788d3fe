"""Memory and flow control for RL trainers (SGLang's names): release / resume the memory of
the weights and the KV cache (given back to the system before the call returns, measured in
the process's resident memory), and pause / continue generation in its three modes."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from loomlm.runtime import Engine, SamplingParams

from ..helpers import assert_pool_whole, hf_greedy, prompts_of_lengths
from .refit import GREEDY, greedy

LONG = SamplingParams(max_new_tokens=200, temperature=0, ignore_eos=True)


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A random Llama whose weights (~66 MB, mostly the 32k vocabulary) show in RSS."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=32000, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.08)
    path = tmp_path_factory.mktemp("big") / "llama-32k"
    model.save_pretrained(path)
    return path, model.eval()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_release_gives_memory_back_and_resume_plus_update_restores_the_model(big_checkpoint):
    path, hf = big_checkpoint
    prompts = prompts_of_lengths([12, 30], 32000, seed=1)
    with Engine(path, skip_tokenizer_init=True, max_total_tokens=32768) as engine:
        expected = greedy(engine, prompts)
        assert expected == [hf_greedy(hf, p, 12) for p in prompts]
        pool = engine.kv_pool
        pool_bytes = 2 * pool.k.numel() * pool.k.element_size()  # 2 x 33.5 MB
        pool.k.fill_(0.0), pool.v.fill_(0.0)  # every page of the pool resident, as after long use
        weight_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())

        before = rss()
        freed = engine.release_memory_occupation(["kv_cache"])
        assert freed >= 0.99 * pool_bytes
        assert before - rss() >= 0.9 * pool_bytes  # gone before the call returned
        with pytest.raises(ValueError, match="kv_cache memory is released"):
            engine.generate(input_ids=prompts[0], sampling_params=GREEDY)

        before = rss()
        assert engine.release_memory_occupation(["weights"]) >= 0.95 * weight_bytes
        assert before - rss() >= 0.8 * weight_bytes
        with pytest.raises(ValueError, match="'weights' is released already"):
            engine.release_memory_occupation(["weights"])

        # the trainer's multi-stage wake-up: weights, the update, then the KV cache
        engine.resume_memory_occupation(["weights"])
        engine.update_weights_from_tensor(list(hf.named_parameters()))
        with pytest.raises(ValueError, match="kv_cache memory is released"):
            engine.generate(input_ids=prompts[0], sampling_params=GREEDY)
        engine.resume_memory_occupation(["kv_cache"])
        assert greedy(engine, prompts) == expected
        with pytest.raises(ValueError, match="without release_memory_occupation"):
            engine.resume_memory_occupation(["kv_cache"])
        with pytest.raises(ValueError, match="tags: 'gpu' is not one of"):
            engine.release_memory_occupation(["gpu"])
        assert_pool_whole(engine)


def test_fifty_update_release_resume_cycles_leak_nothing(big_checkpoint):
    path, hf = big_checkpoint
    params = [(n, p.detach().clone()) for n, p in hf.named_parameters()]
    prompts = prompts_of_lengths([9, 21], 32000, seed=2)
    with Engine(path, skip_tokenizer_init=True, max_total_tokens=8192) as engine:
        expected = greedy(engine, prompts)
        sizes = []
        for i in range(50):
            assert greedy(engine, prompts) == expected
            engine.release_memory_occupation()  # both
            engine.resume_memory_occupation(["weights"])
            engine.update_weights_from_tensor(params, weight_version=f"v{i}")
            engine.resume_memory_occupation(["kv_cache"])
            sizes.append(rss())
        assert engine.get_weight_version() == "v49"
        assert greedy(engine, prompts) == expected
        assert sizes[-1] - sizes[4] < 16 << 20  # no growth past the first cycles
        assert_pool_whole(engine)


def _in_background(engine: Engine, prompt: list[int]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        result["out"] = engine.generate(input_ids=prompt, sampling_params=LONG)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 10
    while engine.stats()["num_running"] == 0:  # admitted and stepping
        assert time.time() < deadline
        time.sleep(0.005)
    return thread, result


def _steps(engine: Engine) -> int:
    return int(engine.stats()["num_steps"])


def test_pause_in_place_holds_requests_and_their_kv_across_a_weight_update(tmp_path):
    from ..checkpoints import make_checkpoint
    from .refit import other_weights

    path = make_checkpoint(tmp_path, "llama")
    new = other_weights(path, tmp_path / "new", seed=3)
    prompt = prompts_of_lengths([20], 512, seed=4)[0]
    with Engine(path, skip_tokenizer_init=True, max_total_tokens=1024) as engine:
        thread, result = _in_background(engine, prompt)
        assert engine.pause_generation("in_place") == 1
        steps = _steps(engine)
        time.sleep(0.3)
        assert _steps(engine) == steps  # nothing runs while paused
        assert engine.stats()["num_running"] == 1  # ... and the request keeps its place
        queued: dict[str, Any] = {}
        later = threading.Thread(
            target=lambda: queued.update(
                out=engine.generate(input_ids=prompt, sampling_params=GREEDY)
            )
        )
        later.start()  # a new request waits in the queue
        time.sleep(0.1)
        assert "out" not in queued
        engine.update_weights_from_tensor(list(new.named_parameters()))
        engine.continue_generation()
        thread.join(30)
        later.join(30)
        out = result["out"]
        assert len(out.output_ids) == 200 and out.finish_reason.type == "length"
        assert out.weight_version == "1" and out.num_preemptions == 0
        assert queued["out"].output_ids == hf_greedy(new, prompt, 12)
        assert_pool_whole(engine)


def test_pause_retract_and_abort(tmp_path):
    from ..checkpoints import make_checkpoint

    path = make_checkpoint(tmp_path, "llama")
    prompt = prompts_of_lengths([25], 512, seed=5)[0]
    with Engine(path, skip_tokenizer_init=True, max_total_tokens=1024) as engine:
        alone = engine.generate(input_ids=prompt, sampling_params=LONG).output_ids
        thread, result = _in_background(engine, prompt)
        with pytest.raises(ValueError, match="pause_generation first"):
            engine.release_memory_occupation(["weights"])  # running, not paused
        assert engine.pause_generation("retract") == 1
        stats = engine.stats()
        assert (stats["num_running"], stats["num_waiting"]) == (0, 1)
        # retracted, the request holds no KV: the KV cache may go while it waits
        assert engine.release_memory_occupation(["kv_cache"]) >= 0
        with pytest.raises(ValueError, match="continue_generation: the engine's kv_cache"):
            engine.continue_generation()
        engine.resume_memory_occupation(["kv_cache"])
        engine.continue_generation()
        thread.join(30)
        assert result["out"].output_ids == alone  # recomputed, and greedy the same
        assert result["out"].num_preemptions == 1

        thread, result = _in_background(engine, prompt)
        assert engine.pause_generation("in_place") == 1
        with pytest.raises(ValueError, match="running requests hold KV"):
            engine.release_memory_occupation(["kv_cache"])
        assert engine.pause_generation("abort") == 1
        thread.join(30)
        assert result["out"].finish_reason.type == "abort"
        assert len(result["out"].output_ids) < 200
        engine.continue_generation()
        assert engine.generate(input_ids=prompt, sampling_params=GREEDY).output_ids == alone[:12]
        with pytest.raises(ValueError, match="mode: 'keep' is not one of"):
            engine.pause_generation("keep")
        assert_pool_whole(engine)


@pytest.mark.gpu
def test_release_on_cuda_gives_memory_back_to_the_driver(big_checkpoint):
    path, hf = big_checkpoint
    prompts = prompts_of_lengths([12, 30], 32000, seed=6)
    with Engine(path, device="cuda", skip_tokenizer_init=True, max_total_tokens=32768) as engine:
        expected = greedy(engine, prompts)
        before = torch.cuda.memory_reserved()
        freed = engine.release_memory_occupation()  # both
        assert freed > 0 and before - torch.cuda.memory_reserved() >= 0.9 * freed
        with pytest.raises(ValueError, match="memory is released"):
            engine.generate(input_ids=prompts[0], sampling_params=GREEDY)
        engine.resume_memory_occupation(["weights"])
        engine.update_weights_from_tensor(list(hf.named_parameters()))
        engine.resume_memory_occupation(["kv_cache"])
        assert greedy(engine, prompts) == expected
        assert_pool_whole(engine)
