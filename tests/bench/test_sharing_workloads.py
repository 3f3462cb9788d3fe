"""The prefix-sharing benchmark's workloads, shrunk, on the built-in model: they run, the cache
is hit where the workload shares prefixes, and the decode-stall figures are consistent."""

from __future__ import annotations

import pytest
from loomlm.bench.decode_stall import decode_stall
from loomlm.bench.sharing_workloads import few_shot, multi_turn, tree_of_thought
from loomlm.runtime import Engine


@pytest.fixture(scope="module")
def engine():
    with Engine(skip_tokenizer_init=True, max_total_tokens=8192) as e:
        yield e


def test_few_shot_hits_the_cache_for_all_but_the_first_prefix(engine):
    engine.flush_cache()
    res = few_shot(engine, num=8, prefix_len=100, suffix_len=4, output_len=3)
    assert res.requests == 8 and res.output_tokens == 24
    assert res.hit_rate == pytest.approx(7 * 100 / (8 * 104))


def test_multi_turn_and_tree_reuse_their_history(engine):
    engine.flush_cache()
    chat = multi_turn(engine, conversations=3, turns=3, system_len=20, user_len=8, output_len=4)
    assert chat.requests == 9 and chat.output_tokens == 36 and chat.hit_rate > 0.5
    engine.flush_cache()
    tree = tree_of_thought(engine, question_len=40, levels=2, branches=2, step_len=4, output_len=4)
    assert tree.requests == 6 and tree.output_tokens == 24 and tree.hit_rate > 0.6


def test_decode_stall_reports_ordered_latencies(engine):
    res = decode_stall(
        engine, decoders=3, decoder_prompt=10, long_prompt=200, arrive_after=4, after_first=3
    )
    assert res.samples >= 3 * 3
    assert 0 < res.median <= res.p99 <= res.max and res.undisturbed_median > 0
    assert res.long_prompt_ttft > 0
    assert engine.stats()["num_running"] == 0  # the decoders were aborted on leaving
