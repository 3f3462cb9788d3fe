"""The radix cache, cache-aware scheduling and chunked prefill, through the engine.

Correctness: greedy outputs equal transformers' and do not depend on the cache, the chunk
size or the policy. Accounting: cached_tokens is exact and the pool comes back whole.
"""

from __future__ import annotations

import random
import threading

import pytest
from loomlm.runtime import Engine, SamplingParams

from ..checkpoints import hf_model, make_checkpoint
from ..helpers import assert_pool_whole, hf_greedy

GREEDY = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)


def shared_prefix_prompts(seed: int = 0, vocab: int = 512) -> list[list[int]]:
    """Prompts that share prefixes in every way that matters: a common system prompt, two
    few-shot groups under it, exact duplicates, a prompt that is a prefix of another, and
    one that shares nothing."""
    rng = random.Random(seed)

    def ids(n: int) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(n)]

    system = [1] + ids(40)
    shots_a, shots_b = ids(25), ids(18)
    prompts = [system + shots_a + ids(rng.randint(1, 12)) for _ in range(4)]
    prompts += [system + shots_b + ids(rng.randint(1, 12)) for _ in range(3)]
    prompts += [prompts[0], prompts[4]]  # duplicates
    prompts += [system + shots_a, system[:20]]  # prefixes of others
    prompts += [[1] + ids(50)]
    return prompts


def run(path, prompts, params=GREEDY, staggered=False, **engine_kwargs) -> list[list[int]]:
    """Greedy outputs of `prompts`, submitted together (or one by one from threads, so that
    later ones find earlier ones cached or running), with the pool whole afterwards.

    A long request runs in the background throughout, so that prompts are admitted while
    something decodes: only then is a prompt cut into chunks. Its output is checked too."""
    with Engine(path, skip_tokenizer_init=True, max_total_tokens=4096, **engine_kwargs) as engine:
        background = {}
        busy = SamplingParams(max_new_tokens=150, temperature=0, ignore_eos=True)
        worker = threading.Thread(
            target=lambda: background.setdefault(
                "ids", engine.generate(input_ids=prompts[-1], sampling_params=busy).output_ids
            )
        )
        worker.start()
        while engine.stats()["generated_tokens"] == 0:
            pass
        if not staggered:
            outs = [
                o.output_ids for o in engine.generate(input_ids=prompts, sampling_params=params)
            ]
        else:
            outs = [None] * len(prompts)

            def submit(i: int) -> None:
                outs[i] = engine.generate(input_ids=prompts[i], sampling_params=params).output_ids

            threads = []
            for i in range(len(prompts)):
                threads.append(threading.Thread(target=submit, args=(i,)))
                threads[-1].start()
                threads[-1].join(timeout=0.01 * (i % 3))  # some overlap, some not
            for t in threads:
                t.join()
        worker.join()
        assert_pool_whole(engine)
    return outs + [background["ids"]]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = make_checkpoint(tmp_path_factory.mktemp("llama"), "llama")
    prompts = shared_prefix_prompts()
    expected = run(path, prompts, disable_radix_cache=True, chunked_prefill_size=-1)
    return path, prompts, expected


def test_reference_run_equals_transformers(llama):
    path, prompts, expected = llama
    hf = hf_model(path)
    for ids, out in zip(prompts, expected):
        assert out == hf_greedy(hf, ids, GREEDY.max_new_tokens)
    assert expected[-1] == hf_greedy(hf, prompts[-1], 150)


@pytest.mark.parametrize("chunk", [1, 7, 64, -1])  # -1: off (whole prompt)
@pytest.mark.parametrize("cache", [True, False])
def test_greedy_is_the_same_with_cache_and_chunking(llama, chunk, cache):
    path, prompts, expected = llama
    outs = run(path, prompts, chunked_prefill_size=chunk, disable_radix_cache=not cache)
    assert outs == expected


@pytest.mark.parametrize("policy", ["fcfs", "lpm", "dfs-weight"])
def test_greedy_is_the_same_under_each_policy_with_staggered_arrivals(llama, policy):
    path, prompts, expected = llama
    outs = run(path, prompts, staggered=True, schedule_policy=policy, chunked_prefill_size=16)
    assert outs == expected


@pytest.mark.parametrize("variant", ["qwen3", "mistral-window"])
def test_gqa_and_sliding_window_models_read_cached_prefixes_correctly(tmp_path, variant):
    path = make_checkpoint(tmp_path, variant)
    prompts = shared_prefix_prompts(seed=3)
    expected = run(path, prompts, disable_radix_cache=True, chunked_prefill_size=-1)
    assert run(path, prompts, staggered=True, chunked_prefill_size=5) == expected
    hf = hf_model(path)
    assert expected[1] == hf_greedy(hf, prompts[1], GREEDY.max_new_tokens)


def test_cached_tokens_is_exact(tmp_path):
    path = make_checkpoint(tmp_path, "llama")
    prompts = shared_prefix_prompts(seed=1)
    system_and_shots = len(prompts[0]) - 1  # prompts[0] ends with at least one own token
    while prompts[0][:system_and_shots] != prompts[1][:system_and_shots]:
        system_and_shots -= 1
    with Engine(path, skip_tokenizer_init=True, max_total_tokens=4096) as engine:
        first = engine.generate(input_ids=prompts[0], sampling_params=GREEDY)
        again = engine.generate(input_ids=prompts[0], sampling_params=GREEDY)
        sibling = engine.generate(input_ids=prompts[1], sampling_params=GREEDY)
        assert first.cached_tokens == 0
        assert again.cached_tokens == len(prompts[0]) - 1  # all but the last token
        assert again.output_ids == first.output_ids
        assert sibling.cached_tokens == system_and_shots
        assert engine.stats()["cache_hit_tokens"] == again.cached_tokens + sibling.cached_tokens

        # n samples of one new prompt, submitted together: the prompt is computed once and
        # every sample but the first reports it cached. (Only its first token, BOS, was
        # cached before.)
        fresh = [1] + list(range(300, 340))
        outs = engine.generate(input_ids=fresh, sampling_params={"max_new_tokens": 4, "n": 3})
        assert sorted(o.cached_tokens for o in outs) == [1, len(fresh) - 1, len(fresh) - 1]
        assert_pool_whole(engine)


def test_a_shared_uncached_prefix_is_computed_once(tmp_path):
    path = make_checkpoint(tmp_path, "llama")
    rng = random.Random(7)
    prefix = [1] + [rng.randrange(3, 512) for _ in range(99)]
    prompts = [prefix + [rng.randrange(3, 512) for _ in range(5)] for _ in range(8)]
    params = SamplingParams(max_new_tokens=1, temperature=0)
    for cache in (True, False):
        with Engine(
            path, skip_tokenizer_init=True, max_total_tokens=4096, disable_radix_cache=not cache
        ) as engine:
            outs = engine.generate(input_ids=prompts, sampling_params=params)
            computed = engine.stats()["prompt_tokens"]
        if cache:
            assert computed == 100 + 5 + 7 * 5  # the prefix once, then only suffixes
            assert sorted(o.cached_tokens for o in outs) == [0] + [100] * 7
        else:
            assert computed == 8 * 105


def test_prompt_logprobs_are_computed_even_when_the_prompt_is_cached(tmp_path):
    path = make_checkpoint(tmp_path, "llama")
    prompt = shared_prefix_prompts(seed=2)[0]
    kwargs = dict(input_ids=prompt, sampling_params=GREEDY, return_logprob=True)
    with Engine(path, skip_tokenizer_init=True, max_total_tokens=4096) as engine:
        engine.generate(input_ids=prompt, sampling_params=GREEDY)  # cache the whole prompt
        full = engine.generate(**kwargs, logprob_start_len=0)
        tail = engine.generate(**kwargs, logprob_start_len=30)
    with Engine(path, skip_tokenizer_init=True, disable_radix_cache=True) as engine:
        reference = engine.generate(**kwargs, logprob_start_len=0)
    assert full.cached_tokens == 0 and tail.cached_tokens == 30
    assert len(full.input_token_logprobs) == len(prompt)
    for ours, ref in zip(full.input_token_logprobs, reference.input_token_logprobs):
        assert ours[1] == ref[1]
        assert (ours[0] is None and ref[0] is None) or ours[0] == pytest.approx(ref[0], abs=1e-4)
    assert [e[1] for e in tail.input_token_logprobs] == prompt[30:]
    assert tail.input_token_logprobs[1][0] == pytest.approx(
        full.input_token_logprobs[31][0], abs=1e-4
    )


def test_a_pool_too_small_for_the_working_set(tmp_path):
    """Rounds of shared-prefix requests through 400 slots: the cache evicts, requests are
    preempted and recomputed, outputs stay right and every slot comes back."""
    path = make_checkpoint(tmp_path, "qwen2")
    rng = random.Random(11)
    rounds = []
    for r in range(3):
        prompts = shared_prefix_prompts(seed=20 + r)
        rng.shuffle(prompts)
        rounds.append(prompts)
    params = SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True)
    expected = [run(path, p, params, disable_radix_cache=True)[:-1] for p in rounds]
    with Engine(
        path, skip_tokenizer_init=True, max_total_tokens=400, chunked_prefill_size=32
    ) as engine:
        for prompts, want in zip(rounds, expected):
            outs = engine.generate(input_ids=prompts, sampling_params=params)
            assert [o.output_ids for o in outs] == want
        stats = assert_pool_whole(engine)
    assert stats["num_preemptions"] > 0 and stats["evicted_tokens"] > 0
    assert stats["cache_hit_tokens"] > 0


def test_flush_cache_is_refused_while_requests_run(tmp_path):
    path = make_checkpoint(tmp_path, "llama")
    with Engine(path, skip_tokenizer_init=True, max_total_tokens=4096) as engine:
        engine.generate(input_ids=[1, 5, 6, 7, 8], sampling_params=GREEDY)
        assert engine.stats()["cached_tokens"] > 0
        long = {"max_new_tokens": 200, "ignore_eos": True}
        stream = engine.stream(input_ids=[1, 9, 9, 9], sampling_params=long)
        next(stream)
        assert engine.flush_cache() is False
        stream.close()  # aborts it
        assert_pool_whole(engine)  # flushes once idle
        assert engine.stats()["cached_tokens"] == 0


def test_aborting_a_prompt_mid_chunked_prefill_frees_its_slots(tmp_path):
    path = make_checkpoint(tmp_path, "llama")
    with Engine(
        path, skip_tokenizer_init=True, max_total_tokens=4096, chunked_prefill_size=1
    ) as engine:
        # Something must be decoding: only then are prompts cut into chunks.
        decoding = engine.stream(
            input_ids=[1, 4, 4], sampling_params={"max_new_tokens": 250, "ignore_eos": True}
        )
        next(decoding)
        done = {}
        long_prompt = [1] + list(range(3, 200))
        t = threading.Thread(
            target=lambda: done.setdefault(
                "out", engine.generate(input_ids=long_prompt, sampling_params=GREEDY, rid="long")
            )
        )
        computed = engine.stats()["prompt_tokens"]
        t.start()
        while engine.stats()["prompt_tokens"] < computed + 5:
            pass
        engine.abort("long")
        t.join(timeout=30)
        assert done["out"].finish_reason.type == "abort"
        assert done["out"].output_ids == []
        decoding.close()
        stats = assert_pool_whole(engine)
        assert stats["prompt_tokens"] < computed + 190  # it really was stopped part-way


def test_invalid_policy_and_chunk_size_are_rejected(tmp_path):
    path = make_checkpoint(tmp_path, "llama")
    with pytest.raises(ValueError, match="schedule_policy"):
        Engine(path, skip_tokenizer_init=True, schedule_policy="random")
    with pytest.raises(ValueError, match="chunked_prefill_size"):
        Engine(path, skip_tokenizer_init=True, chunked_prefill_size=0)
