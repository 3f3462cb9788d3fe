"""KVPool's slot handling: freed slots are reused first, as the runs they were."""

from __future__ import annotations

import torch
from loomlm.runtime.kvcache.kv_pool import KVPool


def small_pool(slots: int = 64) -> KVPool:
    cpu = torch.device("cpu")
    return KVPool(slots, 2, 2, 8, torch.float32, cpu, max_requests=4, max_context=32)


def test_the_slots_freed_last_are_handed_out_first_in_their_order() -> None:
    pool = small_pool()
    first = pool.alloc(8)
    second = pool.alloc(8)
    assert first is not None and second is not None
    pool.free(first)
    pool.free(second)
    again = pool.alloc(12)
    assert again is not None
    # second's run whole and ascending, then the start of first's: the mapped, warm pages.
    assert again.tolist() == second.tolist() + first[:4].tolist()
    assert pool.num_free() == 64 - 12


def test_alloc_refuses_more_than_is_free_and_takes_nothing() -> None:
    pool = small_pool(16)
    assert pool.alloc(17) is None
    assert pool.num_free() == 16
    taken = pool.alloc(16)
    assert taken is not None and sorted(taken.tolist()) == list(range(16))
    assert pool.alloc(1) is None
