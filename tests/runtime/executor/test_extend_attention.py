"""Extend attention over a cached prefix, through the backend: the C++ kernel (any slot order),
and the SDPA path, which reads the pool in place when the context's slots form one ascending
run and gathers them otherwise: all give the same result."""

from __future__ import annotations

import pytest
import torch
from loomlm.runtime.executor.attention.paged_extend import (
    kernel_available as extend_kernel_available,
)
from loomlm.runtime.executor.attention.torch_backend import TorchAttention
from loomlm.runtime.executor.forward_context import ForwardBatch
from loomlm.runtime.kvcache.kv_pool import KVPool

HEADS, KV_HEADS, DIM = 4, 2, 16


def _extend(
    slots: torch.Tensor,
    prefix: int,
    keys: torch.Tensor,
    values: torch.Tensor,
    q,
    window,
    kernel: bool = False,
):
    """Run one layer's attention for the tokens after `prefix`, with the context stored at
    `slots` (the prefix's keys written beforehand, as a cache hit would have them)."""
    total = slots.shape[0]
    pool = KVPool(64, 1, KV_HEADS, DIM, torch.float32, torch.device("cpu"), 2, 64)
    pool.k[0, slots[:prefix]] = keys[:prefix]
    pool.v[0, slots[:prefix]] = values[:prefix]
    pool.slot_table[0, :total] = slots
    attention = TorchAttention(HEADS, KV_HEADS, DIM, window)
    attention.warm_up(torch.device("cpu"))
    attention._extend_kernel = kernel  # which path to test
    batch = ForwardBatch(
        input_ids=torch.zeros(total - prefix, dtype=torch.int64),
        positions=torch.arange(prefix, total),
        out_slots=slots[prefix:],
        table_rows=[0],
        prefix_lens=[prefix],
        extend_lens=[total - prefix],
        seq_lens=[total],
        slot_table=pool.slot_table,
        kv_pool=pool,
        attention=attention,
    )
    attention.prepare(batch)
    first_slot = None if kernel else attention._extends[0].first_slot  # how SDPA reads it
    return attention.forward(0, q, keys[prefix:], values[prefix:], batch), first_slot


@pytest.mark.parametrize("window", [None, 4])
def test_in_place_and_gathered_contexts_agree(window):
    g = torch.Generator().manual_seed(0)
    total, prefix = 20, 12
    keys = torch.randn(total, KV_HEADS, DIM, generator=g)
    values = torch.randn(total, KV_HEADS, DIM, generator=g)
    q = torch.randn(total - prefix, HEADS, DIM, generator=g)
    run = torch.arange(30, 30 + total)  # one ascending run: read as a view of the pool
    scattered = torch.randperm(64, generator=g)[:total]  # gathered
    in_place, first = _extend(run, prefix, keys, values, q, window)
    gathered, none = _extend(scattered, prefix, keys, values, q, window)
    assert first == 30 and none is None
    assert torch.allclose(in_place, gathered, atol=1e-6)
    if extend_kernel_available(torch.device("cpu"), DIM):
        by_kernel, _ = _extend(scattered, prefix, keys, values, q, window, kernel=True)
        assert torch.allclose(by_kernel, gathered, atol=1e-5)
    # and both equal plain causal attention over the whole context
    k = keys.repeat_interleave(HEADS // KV_HEADS, dim=1).transpose(0, 1)
    v = values.repeat_interleave(HEADS // KV_HEADS, dim=1).transpose(0, 1)
    scores = q.transpose(0, 1) @ k.transpose(1, 2) * DIM**-0.5  # [H, E, S]
    pos_q = torch.arange(prefix, total)[:, None]
    pos_k = torch.arange(total)[None, :]
    allowed = pos_k <= pos_q
    if window is not None:
        allowed &= pos_k > pos_q - window
    want = (scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v).transpose(0, 1)
    assert torch.allclose(in_place, want, atol=1e-5)


def test_the_last_layer_computes_only_the_kept_queries():
    """Past the last layer's attention the model keeps only the rows that need logits
    (`keep_rows`): there the kernel takes each request's suffix of rows from its first kept row,
    leaves out requests with none, and those rows equal the full computation."""
    if not extend_kernel_available(torch.device("cpu"), DIM):
        pytest.skip("no C++ compiler")
    g = torch.Generator().manual_seed(1)
    layers = 2
    pool = KVPool(64, layers, KV_HEADS, DIM, torch.float32, torch.device("cpu"), 4, 32)
    # request 0: a prompt of 5; request 1: a decode at position 4; request 2: 7 tokens after a
    # cached prefix of 3; request 3: a prompt chunk of 4 that needs no logits
    prefix, extend = [0, 4, 3, 0], [5, 1, 7, 4]
    slots = torch.randperm(64, generator=g)
    starts, used = [], 0
    for row, (p, e) in enumerate(zip(prefix, extend)):
        pool.slot_table[row, : p + e] = slots[used : used + p + e]
        starts.append(used)
        used += p + e
    for layer in range(layers):  # cached keys: anything
        pool.k[layer] = torch.randn(64, KV_HEADS, DIM, generator=g)
        pool.v[layer] = torch.randn(64, KV_HEADS, DIM, generator=g)
    new_slots = torch.cat(
        [pool.slot_table[r, p : p + e] for r, (p, e) in enumerate(zip(prefix, extend))]
    )
    tokens = sum(extend)
    q = torch.randn(tokens, HEADS, DIM, generator=g)
    k = torch.randn(tokens, KV_HEADS, DIM, generator=g)
    v = torch.randn(tokens, KV_HEADS, DIM, generator=g)

    def run(keep_rows):
        attention = TorchAttention(HEADS, KV_HEADS, DIM, None)
        attention.warm_up(torch.device("cpu"))
        batch = ForwardBatch(
            input_ids=torch.zeros(tokens, dtype=torch.int64),
            positions=torch.cat([torch.arange(p, p + e) for p, e in zip(prefix, extend)]),
            out_slots=new_slots,
            table_rows=[0, 1, 2, 3],
            prefix_lens=prefix,
            extend_lens=extend,
            seq_lens=[p + e for p, e in zip(prefix, extend)],
            slot_table=pool.slot_table,
            kv_pool=pool,
            attention=attention,
            keep_rows=keep_rows,
        )
        attention.prepare(batch)
        return attention, [attention.forward(layer, q, k, v, batch) for layer in range(layers)]

    keep = [2, 5, 11]  # inside request 0, request 1's decode row, inside request 2
    attention, outs = run(keep)
    assert attention._kernel_extends is not None
    # (first query row, new tokens, offset in the extends' slots, context): requests 0 and 2
    assert attention._kernel_extends.last_layer.tolist() == [[2, 3, 0, 5], [11, 2, 5, 10]]
    _, full = run(None)
    assert torch.equal(outs[0], full[0])  # an earlier layer: every row
    rows = [2, 3, 4, 5, 11, 12]  # the suffixes computed, and the decode row
    assert torch.allclose(outs[1][rows], full[1][rows], atol=1e-6)
