"""Lazily zeroed host tensors (utils/host_memory.py) and the KV pool and budget built on them."""

from __future__ import annotations

import gc

import pytest
import torch
from loomlm.runtime.kvcache import kv_budget
from loomlm.runtime.kvcache.kv_budget import free_memory_bytes
from loomlm.runtime.kvcache.kv_pool import KVPool
from loomlm.runtime.utils.host_memory import lazily_zeroed, reserved_bytes

MIB = 1 << 20


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64])
def test_reads_as_zeros_of_the_shape_and_dtype_asked_and_takes_writes(
    dtype: torch.dtype,
) -> None:
    t = lazily_zeroed((3, 5, 7), dtype)
    assert t.shape == (3, 5, 7) and t.dtype == dtype and t.is_contiguous()
    assert torch.equal(t, torch.zeros(3, 5, 7, dtype=dtype))
    t[1, 2] = 4
    assert int(t.sum()) == 4 * 7 and int(t[2].abs().sum()) == 0


def test_pages_are_taken_on_first_write_not_at_allocation() -> None:
    gc.collect()
    before = resident_bytes()
    t = lazily_zeroed((256 * MIB // 4,), torch.float32)
    after_alloc = resident_bytes()
    assert after_alloc - before < 32 * MIB  # torch.zeros would have taken all 256 MiB here
    t[: 128 * MIB // 4].fill_(1.0)
    assert resident_bytes() - after_alloc > 100 * MIB
    assert float(t[-1]) == 0.0


def test_live_buffers_are_counted_until_their_last_tensor_is_gone() -> None:
    gc.collect()
    start = reserved_bytes()
    t = lazily_zeroed((4, MIB), torch.float32)
    view = t[1:]
    assert reserved_bytes() - start == 16 * MIB
    del t
    gc.collect()
    assert reserved_bytes() - start == 16 * MIB  # the view still holds the mapping
    del view
    gc.collect()
    assert reserved_bytes() == start


def test_empty_shape_needs_no_mapping() -> None:
    start = reserved_bytes()
    assert lazily_zeroed((0, 4), torch.float32).shape == (0, 4)
    assert reserved_bytes() == start


def test_free_memory_leaves_out_what_live_pools_were_promised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two engines in one process must not size their pools from the same untouched bytes."""
    # The machine's own MemAvailable moves with everything else running; hold it still.
    monkeypatch.setattr(kv_budget, "_available_host_bytes", lambda: 8 << 30)
    cpu = torch.device("cpu")
    gc.collect()
    before = free_memory_bytes(cpu)
    pool = KVPool(64 * 1024, 4, 4, 64, torch.float32, cpu, max_requests=4, max_context=128)
    assert torch.count_nonzero(pool.k[0, :16]) == 0 and torch.count_nonzero(pool.v[-1, -16:]) == 0
    assert before - free_memory_bytes(cpu) == pool.k.nbytes + pool.v.nbytes  # 512 MiB
    del pool
    gc.collect()
    assert free_memory_bytes(cpu) == before
