"""The C++ extend-attention kernel against its reference (gather each context, then SDPA with
the causal mask shifted by the cached prefix), on ragged batches of requests with cached
prefixes, scattered slots, GQA, sliding windows, every head size it is built for and every
dtype."""

from __future__ import annotations

import pytest
import torch
from loomlm.runtime.executor.attention.paged_extend import (
    KERNEL_HEAD_DIMS,
    kernel_available,
    paged_extend,
    paged_extend_reference,
    request_table,
)
from loomlm.runtime.executor.cpu_kernels import build

# Where there is a compiler the kernel must build, or these would compare the reference with
# itself (test_the_kernel_builds_where_there_is_a_compiler).
needs_kernel = pytest.mark.skipif(not build.compiler_present(), reason="no C++ compiler")

# (new tokens, context length) per request: a prompt of one token, prompts longer than a
# block of queries and of keys, cached prefixes, a one-token extend after a long prefix.
REQUESTS = [(1, 1), (50, 50), (13, 200), (130, 130), (7, 300), (1, 65), (64, 64)]


@needs_kernel
def test_the_kernel_builds_where_there_is_a_compiler():
    assert kernel_available(torch.device("cpu"), 64)


def _case(heads, kv_heads, dim, requests, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    contexts = sum(seq for _, seq in requests)
    pool = contexts + 37
    k_cache = torch.randn(pool, kv_heads, dim, generator=g).to(dtype)
    v_cache = torch.randn(pool, kv_heads, dim, generator=g).to(dtype)
    slots = torch.randperm(pool, generator=g)[:contexts]  # scattered over the pool
    starts, offsets, row, offset = [], [], 0, 0
    for extend, seq in requests:
        starts.append(row)
        offsets.append(offset)
        row, offset = row + extend, offset + seq
    table = request_table(starts, [e for e, _ in requests], offsets, [s for _, s in requests])
    # a row of queries past the requests' rows: the kernel must leave it alone
    q = torch.randn(row + 1, heads, dim, generator=g).to(dtype)
    return q, k_cache, v_cache, slots, table


@needs_kernel
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (8, 2), (6, 1)])
@pytest.mark.parametrize("window", [None, 1, 5, 70])
def test_kernel_matches_reference(heads, kv_heads, window):
    q, k_cache, v_cache, slots, table = _case(heads, kv_heads, 64, REQUESTS, torch.float32, 0)
    ours = torch.full_like(q, 7.0)
    ref = torch.full_like(q, 7.0)
    paged_extend(q, k_cache, v_cache, slots, table, 0.125, window, ours)
    paged_extend_reference(q, k_cache, v_cache, slots, table, 0.125, window, ref)
    assert torch.allclose(ours, ref, atol=2e-6)
    assert torch.equal(ours[-1], torch.full_like(q[-1], 7.0))  # not a request's row


@needs_kernel
def test_keys_outside_a_querys_view_are_never_used():
    q, k_cache, v_cache, slots, table = _case(4, 2, 32, [(40, 100)], torch.float32, 1)
    before = torch.empty_like(q)
    paged_extend(q, k_cache, v_cache, slots, table, 0.2, 8, before)
    # the context's last key is visible only to the last query; the first key to queries at
    # positions < 8 of which there are none (the queries start at 60)
    k_cache[slots[99]] += 1000.0
    v_cache[slots[0]] += 1000.0
    after = torch.empty_like(q)
    paged_extend(q, k_cache, v_cache, slots, table, 0.2, 8, after)
    assert torch.equal(after[:39], before[:39])
    assert not torch.allclose(after[39], before[39])


@needs_kernel
@pytest.mark.parametrize("dtype, atol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("dim", sorted(KERNEL_HEAD_DIMS))
def test_kernel_half_precision_and_head_sizes(dtype, atol, dim):
    q, k_cache, v_cache, slots, table = _case(4, 2, dim, REQUESTS[1:5], dtype, dim)
    ours = torch.zeros_like(q)
    paged_extend(q, k_cache, v_cache, slots, table, dim**-0.5, 33, ours)
    ref = torch.zeros(q.shape)
    paged_extend_reference(
        q.float(), k_cache.float(), v_cache.float(), slots, table, dim**-0.5, 33, ref
    )
    assert ours.dtype == dtype
    assert (ours.float() - ref).abs().max().item() <= atol


@needs_kernel
def test_kernel_refuses_bad_input_and_the_wrapper_falls_back():
    q, k_cache, v_cache, slots, table = _case(2, 2, 48, [(4, 4)], torch.float32, 0)
    out = torch.zeros_like(q)
    with pytest.raises(RuntimeError, match="head_dim 48"):
        torch.ops.loomlm_cpu.extend_attention(q, k_cache, v_cache, slots, table, 1.0, 0, out)
    paged_extend(q, k_cache, v_cache, slots, table, 1.0, None, out)  # SDPA instead
    ref = torch.zeros_like(q)
    paged_extend_reference(q, k_cache, v_cache, slots, table, 1.0, None, ref)
    assert torch.equal(out, ref)
    q, k_cache, v_cache, slots, table = _case(2, 2, 64, [(4, 4)], torch.float32, 0)
    out = torch.zeros_like(q)
    too_long = request_table([0], [4], [0], [5])  # a context longer than its slots
    with pytest.raises(RuntimeError, match="request 0 is out of range"):
        torch.ops.loomlm_cpu.extend_attention(q, k_cache, v_cache, slots, too_long, 1.0, 0, out)
    bad_slot = slots.clone()
    bad_slot[2] = k_cache.shape[0]
    with pytest.raises(RuntimeError, match="slot out of the pool"):
        torch.ops.loomlm_cpu.extend_attention(q, k_cache, v_cache, bad_slot, table, 1.0, 0, out)
