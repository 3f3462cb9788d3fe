"""How long running decodes stall when a long prompt arrives (the case chunked prefill is for).

`decoders` requests stream their tokens. Once each has produced `arrive_after` tokens, one
long prompt arrives; the decoders go on until it has produced its first token and they have
each made `after_first` more. Each gap between consecutive tokens of a decoder (inter-token
latency) either overlaps the long prompt's prefill (from its arrival to its first token) or
not: the gaps that do not give the undisturbed median, from before and after, so that a
machine whose speed drifts during the run affects both sides alike; the gaps that do show the
disturbance. Without chunking the prefill sits in one step and every decoder waits for all
of it; with chunking it is spread over many steps, each a little slower than a plain decode.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from typing import Any, NamedTuple

from .workloads import random_ids


class StallResult(NamedTuple):
    undisturbed_median: float  # ITL of gaps outside the long prompt's prefill
    median: float  # ITL of gaps that overlap it
    p99: float
    max: float
    long_prompt_ttft: float
    samples: int  # gaps that overlap it

    @property
    def p99_over_median(self) -> float:
        """The disturbance: p99 during the long prefill over the undisturbed median."""
        return self.p99 / self.undisturbed_median


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def decode_stall(
    engine: Any,
    decoders: int = 16,
    decoder_prompt: int = 128,
    long_prompt: int = 2048,
    arrive_after: int = 32,
    after_first: int = 32,
) -> StallResult:
    rng, vocab = random.Random(3), engine.model_config.vocab_size
    prompts = [[1] + random_ids(rng, decoder_prompt - 1, vocab) for _ in range(decoders)]
    long_ids = [1] + random_ids(rng, long_prompt - 1, vocab)
    budget = engine.max_context - decoder_prompt
    params = {"max_new_tokens": budget, "min_new_tokens": budget, "ignore_eos": True}
    stamps: list[list[float]] = [[] for _ in range(decoders)]
    started = threading.Barrier(decoders + 1)
    ready = threading.Semaphore(0)
    first_token_at: list[float] = []

    def decode(i: int) -> None:
        started.wait()
        for _ in engine.stream(input_ids=prompts[i], sampling_params=params):
            stamps[i].append(time.perf_counter())
            if len(stamps[i]) == arrive_after:
                ready.release()
            recent = stamps[i][-after_first:]
            if first_token_at and sum(t > first_token_at[0] for t in recent) == after_first:
                return  # leaving the stream aborts the request
        raise RuntimeError("a decoder ran out of tokens before the long prompt's first one")

    threads = [threading.Thread(target=decode, args=(i,)) for i in range(decoders)]
    for t in threads:
        t.start()
    started.wait()
    for _ in range(decoders):
        ready.acquire()
    sent = time.perf_counter()
    for _ in engine.stream(input_ids=long_ids, sampling_params={"max_new_tokens": 1}):
        first_token_at.append(time.perf_counter())
    for t in threads:
        t.join()
    first = first_token_at[0]
    gaps = [(a, b) for s in stamps for a, b in zip(s, s[1:])]
    during = [b - a for a, b in gaps if b > sent and a < first]
    outside = [b - a for a, b in gaps if b <= sent or a >= first]
    return StallResult(
        statistics.median(outside),
        statistics.median(during),
        percentile(during, 0.99),
        max(during),
        first - sent,
        len(during),
    )
