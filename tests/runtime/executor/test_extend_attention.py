"""Extend attention over a cached prefix reads the pool in place when the context's slots
form one ascending run, and gathers them otherwise: both give the same result."""

from __future__ import annotations

import pytest
import torch
from loomlm.runtime.executor.attention.torch_backend import TorchAttention
from loomlm.runtime.executor.forward_context import ForwardBatch
from loomlm.runtime.kvcache.kv_pool import KVPool

HEADS, KV_HEADS, DIM = 4, 2, 16


def _extend(slots: torch.Tensor, prefix: int, keys: torch.Tensor, values: torch.Tensor, q, window):
    """Run one layer's attention for the tokens after `prefix`, with the context stored at
    `slots` (the prefix's keys written beforehand, as a cache hit would have them)."""
    total = slots.shape[0]
    pool = KVPool(64, 1, KV_HEADS, DIM, torch.float32, torch.device("cpu"), 2, 64)
    pool.k[0, slots[:prefix]] = keys[:prefix]
    pool.v[0, slots[:prefix]] = values[:prefix]
    pool.slot_table[0, :total] = slots
    attention = TorchAttention(HEADS, KV_HEADS, DIM, window)
    attention.warm_up(torch.device("cpu"))
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
    first_slot = attention._extends[0].first_slot  # which way the context is read
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
