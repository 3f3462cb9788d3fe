"""KVPool's slot handling: the free list is first in, first out."""

from __future__ import annotations

import torch
from loomlm.runtime.kvcache.kv_pool import KVPool


def small_pool(slots: int = 64) -> KVPool:
    cpu = torch.device("cpu")
    return KVPool(slots, 2, 2, 8, torch.float32, cpu, max_requests=4, max_context=32)


def test_freed_slots_return_behind_the_untouched_ones_in_their_order() -> None:
    pool = small_pool(32)
    first = pool.alloc(8)
    assert first is not None and first.tolist() == list(range(8))
    pool.free(first[4:])
    pool.free(first[:4])
    rest = pool.alloc(28)
    assert rest is not None
    assert rest.tolist() == list(range(8, 32)) + [4, 5, 6, 7]
    assert pool.num_free() == 4


def test_alloc_refuses_more_than_is_free_and_takes_nothing() -> None:
    pool = small_pool(16)
    assert pool.alloc(17) is None
    assert pool.num_free() == 16
    taken = pool.alloc(16)
    assert taken is not None and sorted(taken.tolist()) == list(range(16))
    assert pool.alloc(1) is None
