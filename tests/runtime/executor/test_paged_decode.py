"""The C++ decode-attention kernel against its reference (gather into a padded block + SDPA)."""

from __future__ import annotations

import pytest
import torch
from loomlm.runtime.executor.attention import paged_decode as pd
from loomlm.runtime.executor.attention.paged_decode import (
    kernel_available,
    paged_decode,
    paged_decode_reference,
)
from loomlm.runtime.executor.cpu_kernels import build

# Only a machine without a C++ compiler skips these: where there is one, the kernel must build
# (test_the_kernel_builds_where_there_is_a_compiler), or the tests below would quietly
# compare the reference with itself.
needs_kernel = pytest.mark.skipif(not build.compiler_present(), reason="no C++ compiler")


@needs_kernel
def test_the_kernel_builds_where_there_is_a_compiler():
    assert kernel_available(torch.device("cpu"), 64)


def _case(heads, kv_heads, dim, lens, window, dtype, seed, contiguous=False):
    g = torch.Generator().manual_seed(seed)
    longest = max(lens)
    total = len(lens) * longest + 50
    k_cache = torch.randn(total, kv_heads, dim, generator=g).to(dtype)
    v_cache = torch.randn(total, kv_heads, dim, generator=g).to(dtype)
    order = torch.arange(total) if contiguous else torch.randperm(total, generator=g)
    slots = order[: len(lens) * longest].view(len(lens), longest).contiguous()
    hi = torch.tensor(lens)
    lo = torch.zeros_like(hi) if window is None else (hi - window).clamp(min=0)
    q = torch.randn(len(lens), heads, dim, generator=g).to(dtype)
    return q, k_cache, v_cache, slots, lo, hi


@needs_kernel
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (8, 2), (6, 1)])
@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("chunk", [3, 256])  # splits every context into chunks, or none
def test_kernel_matches_reference(heads, kv_heads, window, chunk, monkeypatch):
    monkeypatch.setattr(pd, "DECODE_CHUNK", chunk)
    q, k_cache, v_cache, slots, lo, hi = _case(
        heads, kv_heads, 64, [1, 7, 23, 40], window, torch.float32, seed=heads + kv_heads
    )
    ours = paged_decode(q, k_cache, v_cache, slots, lo, hi, 0.25)
    ref = paged_decode_reference(q, k_cache, v_cache, slots, lo, hi, 0.25)
    assert ours.shape == (4, heads, 64)
    assert torch.allclose(ours, ref, atol=1e-5)
    # Keys outside a request's visible range (padding, or before the window) are never read.
    k_cache[slots[0, 1]] += 100.0
    if window is not None:
        k_cache[slots[3, 0]] += 100.0
    again = paged_decode(q, k_cache, v_cache, slots, lo, hi, 0.25)
    assert torch.allclose(again[0], ours[0], atol=1e-6)
    assert torch.allclose(again[3], ours[3], atol=1e-6)


@needs_kernel
@pytest.mark.parametrize("dtype, atol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("dim", [16, 80, 128])
def test_kernel_half_precision_and_head_sizes(dtype, atol, dim):
    q, k_cache, v_cache, slots, lo, hi = _case(8, 4, dim, [300, 5, 130], None, dtype, seed=dim)
    ours = paged_decode(q, k_cache, v_cache, slots, lo, hi, dim**-0.5)
    ref = paged_decode_reference(
        q.float(), k_cache.float(), v_cache.float(), slots, lo, hi, dim**-0.5
    )
    assert ours.dtype == dtype
    assert (ours.float() - ref).abs().max().item() <= atol


@needs_kernel
def test_kernel_refuses_what_it_was_not_built_for_and_the_wrapper_falls_back():
    q, k_cache, v_cache, slots, lo, hi = _case(2, 2, 48, [4], None, torch.float32, seed=0)
    with pytest.raises(RuntimeError, match="head_dim 48"):
        torch.ops.loomlm_cpu.paged_decode(q, k_cache, v_cache, slots, lo, hi, 1.0, 256)
    assert torch.equal(
        paged_decode(q, k_cache, v_cache, slots, lo, hi, 1.0),
        paged_decode_reference(q, k_cache, v_cache, slots, lo, hi, 1.0),
    )
    with pytest.raises(RuntimeError, match="share a dtype"):
        torch.ops.loomlm_cpu.paged_decode(q.double(), k_cache, v_cache, slots, lo, hi, 1.0, 256)


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
