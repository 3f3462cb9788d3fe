"""Reference attention over the paged pool with torch's scaled_dot_product_attention.

Runs on CPU and GPU alike. Decode steps (one new token per request) gather every request's
keys into one padded [B, L, Hkv, D] block and run a single batched attention; steps that
extend prompts attend request by request, with the causal mask shifted by each request's
cached prefix.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..forward_context import ForwardBatch
from .base import AttentionBackend


class _Extend(NamedTuple):
    start: int  # first row of this request's queries in the flattened batch
    end: int
    context_slots: torch.Tensor  # [S] slots of the whole context, in token order
    mask: torch.Tensor | None  # [E, S] bool, None when plain top-left causal suffices
    is_causal: bool


class TorchAttention(AttentionBackend):
    def __init__(
        self, num_heads: int, num_kv_heads: int, head_dim: int, sliding_window: int | None
    ) -> None:
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.scale = head_dim**-0.5
        self.sliding_window = sliding_window
        self._decode_slots: torch.Tensor | None = None
        self._decode_mask: torch.Tensor | None = None
        self._extends: list[_Extend] = []

    def prepare(self, batch: ForwardBatch) -> None:
        device = batch.input_ids.device
        table = batch.slot_table
        if batch.is_decode:
            rows = torch.tensor(batch.table_rows, dtype=torch.int64)
            seq_lens = torch.tensor(batch.seq_lens, dtype=torch.int64)
            longest = max(batch.seq_lens)
            # Padding entries point at whatever slot the row held before; the mask hides them.
            self._decode_slots = table[rows, :longest].to(device)  # [B, L]
            key_pos = torch.arange(longest)
            valid = key_pos[None, :] < seq_lens[:, None]
            if self.sliding_window is not None:
                valid &= key_pos[None, :] > (seq_lens[:, None] - 1 - self.sliding_window)
            self._decode_mask = valid[:, None, None, :].to(device)  # [B, 1, 1, L]
            self._extends = []
            return
        self._decode_slots = self._decode_mask = None
        extends = []
        start = 0
        for row, prefix, extend, seq in zip(
            batch.table_rows, batch.prefix_lens, batch.extend_lens, batch.seq_lens
        ):
            slots = table[row, :seq].to(device)
            mask = None
            is_causal = extend > 1
            if self.sliding_window is not None or (prefix > 0 and extend > 1):
                q_pos = torch.arange(prefix, seq)[:, None]
                k_pos = torch.arange(seq)[None, :]
                allowed = k_pos <= q_pos
                if self.sliding_window is not None:
                    allowed &= k_pos > q_pos - self.sliding_window
                mask, is_causal = allowed.to(device), False
            extends.append(_Extend(start, start + extend, slots, mask, is_causal))
            start += extend
        self._extends = extends

    def forward(
        self,
        layer_id: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        batch: ForwardBatch,
    ) -> torch.Tensor:
        k_cache = batch.kv_pool.k[layer_id]  # [num_slots, Hkv, D]
        v_cache = batch.kv_pool.v[layer_id]
        k_cache.index_copy_(0, batch.out_slots, k)
        v_cache.index_copy_(0, batch.out_slots, v)
        gqa = self.num_heads != self.num_kv_heads
        if self._decode_slots is not None:
            keys = k_cache[self._decode_slots].transpose(1, 2)  # [B, Hkv, L, D]
            values = v_cache[self._decode_slots].transpose(1, 2)
            out = F.scaled_dot_product_attention(
                q.unsqueeze(2),  # [B, H, 1, D]
                keys,
                values,
                attn_mask=self._decode_mask,
                scale=self.scale,
                enable_gqa=gqa,
            )
            return out.squeeze(2)  # [B, H, D]
        out = torch.empty_like(q)
        for ext in self._extends:
            keys = k_cache.index_select(0, ext.context_slots).transpose(0, 1)  # [Hkv, S, D]
            values = v_cache.index_select(0, ext.context_slots).transpose(0, 1)
            queries = q[ext.start : ext.end].transpose(0, 1)  # [H, E, D]
            res = F.scaled_dot_product_attention(
                queries.unsqueeze(0),
                keys.unsqueeze(0),
                values.unsqueeze(0),
                attn_mask=ext.mask,
                is_causal=ext.is_causal,
                scale=self.scale,
                enable_gqa=gqa,
            )
            out[ext.start : ext.end] = res[0].transpose(0, 1)
        return out
