"""Workloads whose requests share prefixes, each driven against one engine and timed.

Token ids are random (the bench model has random weights; speed does not depend on what the
tokens say). Every request's output length is forced with min/max new tokens, so the cache on
and off do the same work apart from what the cache saves.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from .workloads import random_ids


class SharingResult(NamedTuple):
    seconds: float
    requests: int
    output_tokens: int
    prompt_tokens: int  # as sent, over all requests
    hit_rate: float  # share of admitted prompt tokens read from the cache

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds


def _forced(n: int) -> dict[str, Any]:
    return {"max_new_tokens": n, "min_new_tokens": n, "ignore_eos": True, "temperature": 0}


def _timed(engine: Any, body: Callable[[], tuple[int, int, int]]) -> SharingResult:
    before = engine.stats()
    start = time.perf_counter()
    requests, output_tokens, prompt_tokens = body()
    seconds = time.perf_counter() - start
    after = engine.stats()
    hits = after["cache_hit_tokens"] - before["cache_hit_tokens"]
    queried = after["cache_query_tokens"] - before["cache_query_tokens"]
    return SharingResult(
        seconds, requests, output_tokens, prompt_tokens, hits / queried if queried else 0.0
    )


def few_shot(
    engine: Any, num: int = 64, prefix_len: int = 1024, suffix_len: int = 32, output_len: int = 32
) -> SharingResult:
    """`num` requests sharing a `prefix_len`-token prefix, each with its own suffix."""
    rng, vocab = random.Random(0), engine.model_config.vocab_size
    prefix = [1] + random_ids(rng, prefix_len - 1, vocab)
    prompts = [prefix + random_ids(rng, suffix_len, vocab) for _ in range(num)]

    def body() -> tuple[int, int, int]:
        outs = engine.generate(input_ids=prompts, sampling_params=_forced(output_len))
        return len(outs), sum(len(o.output_ids) for o in outs), sum(map(len, prompts))

    return _timed(engine, body)


def multi_turn(
    engine: Any,
    conversations: int = 16,
    turns: int = 4,
    system_len: int = 64,
    user_len: int = 64,
    output_len: int = 32,
) -> SharingResult:
    """Chats that run side by side; each turn resends the whole history plus a new message."""
    rng, vocab = random.Random(1), engine.model_config.vocab_size
    system = [1] + random_ids(rng, system_len - 1, vocab)
    messages = [
        [random_ids(rng, user_len, vocab) for _ in range(turns)] for _ in range(conversations)
    ]
    totals = [[0, 0] for _ in range(conversations)]  # output and prompt tokens per chat

    def chat(c: int) -> None:
        history = list(system)
        for turn in range(turns):
            prompt = history + messages[c][turn]
            out = engine.generate(input_ids=prompt, sampling_params=_forced(output_len))
            history = prompt + out.output_ids
            totals[c][0] += len(out.output_ids)
            totals[c][1] += len(prompt)

    def body() -> tuple[int, int, int]:
        threads = [threading.Thread(target=chat, args=(c,)) for c in range(conversations)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return conversations * turns, sum(t[0] for t in totals), sum(t[1] for t in totals)

    return _timed(engine, body)


def tree_of_thought(
    engine: Any,
    question_len: int = 256,
    levels: int = 3,
    branches: int = 3,
    step_len: int = 8,
    output_len: int = 32,
) -> SharingResult:
    """One question; each thought branches `branches` ways for `levels` levels. A branch's
    prompt is its parent's prompt and thought plus a short instruction of its own."""
    rng, vocab = random.Random(2), engine.model_config.vocab_size
    frontier = [[1] + random_ids(rng, question_len - 1, vocab)]

    def body() -> tuple[int, int, int]:
        nonlocal frontier
        requests = output_tokens = prompt_tokens = 0
        for _ in range(levels):
            prompts = [
                p + random_ids(rng, step_len, vocab) for p in frontier for _ in range(branches)
            ]
            outs = engine.generate(input_ids=prompts, sampling_params=_forced(output_len))
            frontier = [p + o.output_ids for p, o in zip(prompts, outs)]
            requests += len(prompts)
            output_tokens += sum(len(o.output_ids) for o in outs)
            prompt_tokens += sum(map(len, prompts))
        return requests, output_tokens, prompt_tokens

    return _timed(engine, body)
