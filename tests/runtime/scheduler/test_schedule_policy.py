"""The order each scheduling policy gives waiting requests, over a real radix tree."""

from __future__ import annotations

import pytest
import torch
from loomlm.runtime.kvcache.radix_cache import RadixCache
from loomlm.runtime.sampling.sampling_params import SamplingParams
from loomlm.runtime.scheduler.policy import SchedulePolicy
from loomlm.runtime.scheduler.request import Request


def request(rid: str, prompt: list[int], enqueued_step: int = 0) -> Request:
    req = Request(rid, prompt, SamplingParams(), frozenset(), 0, None, lambda _: None)
    req.enqueued_step = enqueued_step
    return req


@pytest.fixture
def cache() -> RadixCache:
    cache = RadixCache(lambda _: None)
    for tokens in ([1, 2, 3, 4, 5, 6], [1, 2, 7, 8], [9, 9]):
        cache.insert(tokens, torch.arange(len(tokens)))
    return cache


def rids(order: list[Request]) -> list[str]:
    return [r.rid for r in order]


def test_fcfs_keeps_arrival_order(cache):
    waiting = [request("a", [5, 5, 5]), request("b", [1, 2, 3, 4, 5, 6, 0])]
    assert rids(SchedulePolicy("fcfs").order(waiting, cache, step=0)) == ["a", "b"]


def test_lpm_puts_the_longest_cached_prefix_first(cache):
    waiting = [
        request("none", [5, 5, 5]),
        request("short", [1, 2, 0, 0]),
        request("long", [1, 2, 3, 4, 5, 0]),
        request("short-too", [9, 0]),
    ]
    order = SchedulePolicy("lpm").order(waiting, cache, step=0)
    assert rids(order) == ["long", "short", "short-too", "none"]  # ties keep arrival order


def test_dfs_weight_runs_the_heaviest_subtree_first_and_keeps_subtrees_together(cache):
    waiting = [
        request("x1", [9, 9, 1]),
        request("a1", [1, 2, 3, 4, 0]),
        request("b1", [1, 2, 7, 8, 0]),
        request("x2", [9, 9, 2]),
        request("a2", [1, 2, 3, 4, 5, 0]),
        request("x3", [9, 9, 3]),
        request("a3", [1, 2, 3, 0]),
    ]
    order = rids(SchedulePolicy("dfs-weight").order(waiting, cache, step=0))
    # [1, 2] holds four requests against [9, 9]'s three; under [1, 2], the [3, ...] branch
    # (three) goes before [7, 8] (one), and parents' requests before their children's.
    assert order[:4] == ["a3", "a1", "a2", "b1"]
    assert sorted(order[4:]) == ["x1", "x2", "x3"]


@pytest.mark.parametrize("name", ["lpm", "dfs-weight"])
def test_a_request_waiting_too_long_goes_first(cache, name):
    waiting = [
        request("old", [9, 0], enqueued_step=0),
        request("hit1", [1, 2, 3, 4, 5, 6, 0], enqueued_step=90),
        request("hit2", [1, 2, 3, 4, 5, 6, 1], enqueued_step=90),
    ]
    policy = SchedulePolicy(name, starvation_steps=50)
    assert rids(policy.order(waiting, cache, step=40)) == ["hit1", "hit2", "old"]
    assert rids(policy.order(waiting, cache, step=100)) == ["old", "hit1", "hit2"]


def test_unknown_policy():
    with pytest.raises(ValueError, match="schedule_policy: expected one of fcfs, lpm, dfs-weight"):
        SchedulePolicy("sjf")
