"""The compiled decode-attention kernel against its eager reference (gather + SDPA)."""

from __future__ import annotations

import pytest
import torch
from loomlm.runtime.executor.attention.paged_decode import (
    paged_decode,
    paged_decode_compiled,
    paged_decode_reference,
)


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (8, 2)])
@pytest.mark.parametrize("window", [None, 5])
def test_compiled_matches_reference(heads, kv_heads, window):
    g = torch.Generator().manual_seed(heads * 10 + kv_heads)
    slots_total, dim = 300, 16
    k_cache = torch.randn(slots_total, kv_heads, dim, generator=g)
    v_cache = torch.randn(slots_total, kv_heads, dim, generator=g)
    lens = torch.tensor([1, 7, 23, 40])
    slots = torch.randperm(slots_total, generator=g)[: 4 * 40].view(4, 40)
    lo = torch.zeros_like(lens) if window is None else (lens - window).clamp(min=0)
    q = torch.randn(4, heads, dim, generator=g)
    ours = paged_decode_compiled(q, k_cache, v_cache, slots, lo, lens, 0.25)
    ref = paged_decode_reference(q, k_cache, v_cache, slots, lo, lens, 0.25)
    assert ours.shape == (4, heads, dim)
    assert torch.allclose(ours, ref, atol=1e-5)
    # Changing a key outside a request's visible range must not change its output.
    k_cache[slots[0, 1]] += 100.0
    again = paged_decode_compiled(q, k_cache, v_cache, slots, lo, lens, 0.25)
    assert torch.allclose(again[0], ours[0], atol=1e-6)


def test_shape_checks():
    with pytest.raises(AssertionError, match="int64"):
        paged_decode(
            torch.zeros(1, 2, 4),
            torch.zeros(5, 2, 4),
            torch.zeros(5, 2, 4),
            torch.zeros(1, 3, dtype=torch.int32),
            torch.zeros(1, dtype=torch.int64),
            torch.ones(1, dtype=torch.int64),
            1.0,
        )


def test_dispatch_uses_the_reference_for_small_gathers_and_agrees_on_large():
    g = torch.Generator().manual_seed(1)
    k_cache = torch.randn(9000, 4, 64, generator=g)
    v_cache = torch.randn(9000, 4, 64, generator=g)
    q = torch.randn(8, 4, 64, generator=g)
    slots = torch.randperm(9000, generator=g)[: 8 * 1000].view(8, 1000)  # 8 MB of keys
    lens = torch.tensor([1000, 990, 700, 999, 800, 1000, 512, 640])
    lo = torch.zeros_like(lens)
    big = paged_decode(q, k_cache, v_cache, slots, lo, lens, 0.125)
    assert torch.allclose(
        big, paged_decode_reference(q, k_cache, v_cache, slots, lo, lens, 0.125), atol=1e-5
    )
