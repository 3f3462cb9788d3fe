"""The offline benchmark's workloads: lists of (prompt token ids, forced output length)."""

from __future__ import annotations

import random
from typing import NamedTuple


class Workload(NamedTuple):
    name: str
    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def output_tokens(self) -> int:
        return sum(self.output_lens)


def random_ids(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(3, vocab) for _ in range(n)]


def mixed(num: int = 64, vocab: int = 32000, seed: int = 0) -> Workload:
    """`num` requests, prompts of 32-512 tokens, outputs of 16-256 tokens (uniform)."""
    rng = random.Random(seed)
    prompt_lens = [rng.randint(32, 512) for _ in range(num)]
    output_lens = [rng.randint(16, 256) for _ in range(num)]
    return Workload(
        f"{num} requests, prompt 32-512, output 16-256",
        [random_ids(rng, n, vocab) for n in prompt_lens],
        output_lens,
    )


def single(
    prompt_len: int = 128, output_len: int = 128, vocab: int = 32000, seed: int = 1
) -> Workload:
    rng = random.Random(seed)
    return Workload(
        f"1 request, prompt {prompt_len}, output {output_len}",
        [random_ids(rng, prompt_len, vocab)],
        [output_len],
    )
