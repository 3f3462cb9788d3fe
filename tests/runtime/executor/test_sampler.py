"""Sampling and stopping rules, end to end through the engine on the default model."""

from __future__ import annotations

import math

import pytest
import torch
from loomlm.runtime import Engine, SamplingParams
from loomlm.runtime.executor.sampler import Sampler, SamplingRow, uniform_from

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def engine():
    with Engine() as e:
        yield e


def test_seeded_sampling_same_alone_and_in_batch(engine):
    params = SamplingParams(
        max_new_tokens=24, temperature=1.0, top_p=0.9, seed=1234, ignore_eos=True
    )
    alone = engine.generate(PROMPT, params).output_ids
    others = [SamplingParams(max_new_tokens=30, temperature=0.8, ignore_eos=True)] * 6
    batch = engine.generate(
        ["The cat", "One day", PROMPT, "Tom", "A dog", "She", "He"],
        [others[0], others[1], params, *others[2:]],
    )
    assert batch[2].output_ids == alone
    again = engine.generate(PROMPT, params).output_ids
    assert again == alone


def test_unseeded_sampling_varies(engine):
    params = SamplingParams(max_new_tokens=24, temperature=1.0, ignore_eos=True)
    outs = {tuple(engine.generate(PROMPT, params).output_ids) for _ in range(4)}
    assert len(outs) > 1


def test_n_samples_differ_and_are_reproducible(engine):
    params = SamplingParams(max_new_tokens=16, temperature=1.0, n=4, seed=7, ignore_eos=True)
    outs = engine.generate(PROMPT, params)
    assert len(outs) == 4
    assert len({tuple(o.output_ids) for o in outs}) > 1
    assert [o.output_ids for o in engine.generate(PROMPT, params)] == [o.output_ids for o in outs]


def test_top_k_one_is_greedy(engine):
    greedy = engine.generate(PROMPT, {"max_new_tokens": 20, "temperature": 0}).output_ids
    topk1 = engine.generate(
        PROMPT, {"max_new_tokens": 20, "temperature": 1.5, "top_k": 1}
    ).output_ids
    assert topk1 == greedy


def test_max_new_tokens_zero_is_prefill_only(engine):
    out = engine.generate(PROMPT, {"max_new_tokens": 0})
    assert out.output_ids == [] and out.text == ""
    assert out.finish_reason.to_dict() == {"type": "length", "length": 0}
    assert out.prompt_tokens == 5


def test_stop_string_is_trimmed(engine):
    full = engine.generate(PROMPT, {"max_new_tokens": 40, "temperature": 0}).text
    assert "Lily" in full
    out = engine.generate(PROMPT, {"max_new_tokens": 40, "temperature": 0, "stop": ["Lily"]})
    assert out.text == full[: full.index("Lily")]
    assert out.finish_reason.to_dict() == {"type": "stop", "matched": "Lily"}
    kept = engine.generate(
        PROMPT, {"max_new_tokens": 40, "temperature": 0, "stop": "Lily", "no_stop_trim": True}
    )
    assert kept.text == full[: full.index("Lily") + 4]


def test_stop_token_ids(engine):
    greedy = engine.generate(PROMPT, {"max_new_tokens": 30, "temperature": 0}).output_ids
    target = greedy[5]
    out = engine.generate(
        PROMPT, {"max_new_tokens": 30, "temperature": 0, "stop_token_ids": [target]}
    )
    assert out.output_ids == greedy[: greedy.index(target) + 1]
    assert out.finish_reason.to_dict() == {"type": "stop", "matched": target}


def test_eos_stops_and_ignore_eos_continues(engine):
    # TinyStories ends a story with BOS (id 1); generation_config lists it as an EOS id.
    out = engine.generate(PROMPT, {"max_new_tokens": 400, "temperature": 0})
    assert out.finish_reason.type == "stop" and out.finish_reason.matched in (1, 2)
    assert out.output_ids[-1] == out.finish_reason.matched
    n = len(out.output_ids)
    longer = engine.generate(
        PROMPT, {"max_new_tokens": n + 10, "temperature": 0, "ignore_eos": True}
    )
    assert len(longer.output_ids) == n + 10 and longer.finish_reason.type == "length"
    assert longer.output_ids[:n] == out.output_ids


def test_min_new_tokens_suppresses_eos(engine):
    out = engine.generate(PROMPT, {"max_new_tokens": 400, "temperature": 0})
    n = len(out.output_ids)
    forced = engine.generate(
        PROMPT, {"max_new_tokens": n + 20, "min_new_tokens": n + 5, "temperature": 0}
    )
    assert len(forced.output_ids) >= n + 5
    assert not set(forced.output_ids[: n + 4]) & {1, 2}


def test_penalties_change_output_and_stay_valid(engine):
    base = engine.generate(PROMPT, {"max_new_tokens": 40, "temperature": 0, "ignore_eos": True})
    for key, value in [
        ("frequency_penalty", 1.5),
        ("presence_penalty", 1.5),
        ("repetition_penalty", 1.8),
    ]:
        out = engine.generate(
            PROMPT, {"max_new_tokens": 40, "temperature": 0, "ignore_eos": True, key: value}
        )
        assert out.output_ids != base.output_ids, key
        # a penalised run repeats its tokens less often than the plain one
        assert len(set(out.output_ids)) >= len(set(base.output_ids)), key


def test_output_logprobs_are_the_models(engine):
    out = engine.generate(
        PROMPT,
        {"max_new_tokens": 12, "temperature": 0},
        return_logprob=True,
        top_logprobs_num=3,
        return_text_in_logprobs=True,
    )
    assert [e[1] for e in out.output_token_logprobs] == out.output_ids
    for entry, top in zip(out.output_token_logprobs, out.output_top_logprobs):
        assert top[0][1] == entry[1]  # greedy: the chosen token is the most likely
        assert math.isclose(top[0][0], entry[0], abs_tol=1e-6)
        assert top[0][0] >= top[1][0] >= top[2][0]
        assert isinstance(entry[2], str)
    # Scoring prompt + output as a prompt gives the same numbers.
    ids = engine.tokenizer.encode(PROMPT) + out.output_ids
    scored = engine.generate(
        input_ids=ids,
        sampling_params={"max_new_tokens": 0},
        return_logprob=True,
        logprob_start_len=4,
    )
    assert scored.input_token_logprobs[0][0] is None
    assert len(scored.input_token_logprobs) == len(out.output_ids) + 1
    for a, b in zip(scored.input_token_logprobs[1:], out.output_token_logprobs):
        assert a[1] == b[1] and math.isclose(a[0], b[0], abs_tol=1e-4)


def test_prompt_logprobs_from_start_position(engine):
    ids = engine.tokenizer.encode("Lily and Tom went to the park to play")
    out = engine.generate(
        input_ids=ids,
        sampling_params={"max_new_tokens": 1},
        return_logprob=True,
        logprob_start_len=3,
        top_logprobs_num=2,
    )
    assert [e[1] for e in out.input_token_logprobs] == ids[3:]
    assert out.input_token_logprobs[0][0] is None
    assert out.input_top_logprobs[0] is None and len(out.input_top_logprobs[1]) == 2
    assert all(e[0] <= 0 for e in out.input_token_logprobs[1:])


def test_uniform_from_is_uniform():
    values = torch.tensor([uniform_from(99, k) for k in range(20000)])
    assert 0 <= values.min() and values.max() < 1
    assert abs(values.mean().item() - 0.5) < 0.01
    assert len({uniform_from(s, 0) for s in range(1000)}) == 1000


def _row(**kw):
    return SamplingRow(
        SamplingParams(**kw),
        seed=kw.get("seed", 0) or 0,
        prompt_ids=[],
        output_ids=[],
        suppressed_ids=frozenset(),
    )


def test_sampler_distribution_follows_temperature_top_k_top_p_min_p():
    sampler = Sampler()
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))

    def freq(**kw):
        counts = torch.zeros(4)
        for s in range(3000):
            r = _row(seed=s + 1, **kw)
            counts[sampler(logits, [r], False, 0).next_ids[0]] += 1
        return counts / counts.sum()

    plain = freq(temperature=1.0)
    assert torch.allclose(plain, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)
    assert freq(temperature=1.0, top_k=2)[2:].sum() == 0
    top_p = freq(temperature=1.0, top_p=0.7)  # keeps 0.5 and 0.3 only
    assert top_p[2:].sum() == 0 and abs(top_p[0] - 0.625) < 0.04
    assert freq(temperature=1.0, min_p=0.5)[2:].sum() == 0  # 0.15 < 0.5 * 0.5
    cold = freq(temperature=0.3)
    assert cold[0] > 0.8
