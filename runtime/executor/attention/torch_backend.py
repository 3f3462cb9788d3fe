"""Reference attention over the paged pool with torch's scaled_dot_product_attention.

Runs on CPU and GPU alike. One-token rows (decodes) run batched attention over the pool
(`paged_decode`), also in steps that mix them with prompt chunks; its metadata (slot rows,
visible ranges) is built once per step in `prepare`, never per layer. On CPU the C++ kernel
reads only each request's own positions, so the batch is one call; prompt extends likewise go
to the C++ extend kernel (`paged_extend`), every request of the step in one call per layer,
keys and values read in place from their slots. The portable reference gathers a padded
block instead: there, when the block is large, requests are grouped by context length so that
each group is padded only to its own longest (bounded waste) at the price of one call per
group, and prompt extends attend request by request through SDPA, with the causal mask shifted
by each request's cached prefix.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..forward_context import ForwardBatch
from .base import AttentionBackend
from .paged_decode import kernel_available, paged_decode
from .paged_extend import kernel_available as extend_kernel_available
from .paged_extend import paged_extend, request_table

# Below this many bytes of gathered keys the reference path does not split a batch into
# groups: moving the padding is cheaper than another call.
LARGE_GATHER_BYTES = 2 << 20
# A decode group admits a request while its context is at most this multiple of the
# group's shortest: padding then wastes under 30% of the gathered keys.
GROUP_LENGTH_RATIO = 1.3


class _DecodeGroup(NamedTuple):
    members: torch.Tensor | None  # [G] the group's query rows; None: the whole batch
    slots: torch.Tensor  # [G, L] slots, padded per request to the group's longest
    lo: torch.Tensor  # [G] first visible key position (sliding window)
    hi: torch.Tensor  # [G] one past the last (the context length)


class _Extend(NamedTuple):
    start: int  # first row of this request's queries in the flattened batch
    end: int
    context_slots: torch.Tensor  # [S] slots of the whole context, in token order
    first_slot: int | None  # when those slots are one run first_slot.. in order: read in place
    mask: torch.Tensor | None  # [E, S] bool, None when plain top-left causal suffices
    is_causal: bool


_NO_REQUESTS = torch.empty((0, 4), dtype=torch.int64)


class _KernelExtends(NamedTuple):
    """A step's extends as the C++ kernel takes them: all requests in one call per layer."""

    slots: torch.Tensor  # [N] every extending request's context slots, concatenated
    requests: torch.Tensor  # [R, 4] from `paged_extend.request_table`
    # The last layer's: only the queries whose outputs the model keeps (`keep_rows`), as one
    # suffix of each request's rows (usually its last row); a request with none is left out.
    last_layer: torch.Tensor


class TorchAttention(AttentionBackend):
    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        sliding_window: int | None,
        deterministic: bool = False,
    ) -> None:
        # Batch-invariant mode: every token's attention, decodes included, goes through the
        # extend kernel, where each query is one vector lane computed the same way whatever
        # shares its task (key blocks fixed by absolute position; blocks hidden from a query
        # leave its sums bitwise unchanged), so a token gets the same bits alone, batched,
        # after a cached prefix or in any prompt chunk. The decode kernel is faster at batch
        # sizes above one but reduces in another order.
        self.deterministic = deterministic
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.sliding_window = sliding_window
        self._groups: list[_DecodeGroup] = []
        self._restore: torch.Tensor | None = None  # undoes the grouping's reordering
        self._extends: list[_Extend] = []
        self._kernel = False  # the C++ decode kernel runs: no grouping needed
        self._extend_kernel = False  # the C++ extend kernel runs prompts
        self._kernel_extends: _KernelExtends | None = None
        self._out_run: int | None = None  # the step's first slot, when its slots are one run

    def warm_up(self, device: torch.device) -> None:
        """Build (or load) the C++ decode kernel now, not under the first request."""
        self._kernel = kernel_available(device, self.head_dim)
        self._extend_kernel = extend_kernel_available(device, self.head_dim, self.deterministic)
        if self.deterministic and not (self._extend_kernel and device.type == "cpu"):
            raise ValueError(
                f"deterministic: needs the C++ attention kernel, which does not run heads of "
                f"{self.head_dim} on {device.type} here"
            )

    def prepare(self, batch: ForwardBatch) -> None:
        self._groups, self._restore, self._extends = [], None, []
        self._kernel_extends = None
        self._out_run = None
        slots = batch.out_slots
        if slots.device.type == "cpu" and (slots.numel() == 1 or bool((slots.diff() == 1).all())):
            self._out_run = int(slots[0])
        offsets = list(itertools.accumulate(batch.extend_lens, initial=0))
        if self.deterministic:
            self._prepare_extend(batch, list(range(len(batch.extend_lens))), offsets)
            return
        # One-token rows (decodes, and prompts cached up to their last token) take the
        # batched decode path even in a batch that also extends prompts (chunked prefill).
        singles = [i for i, n in enumerate(batch.extend_lens) if n == 1]
        if len(singles) == len(batch.extend_lens):
            self._prepare_decode(batch, singles, offsets, whole_batch=True)
            return
        if singles:
            self._prepare_decode(batch, singles, offsets, whole_batch=False)
        longer = [i for i, n in enumerate(batch.extend_lens) if n > 1]
        self._prepare_extend(batch, longer, offsets)

    def _prepare_decode(
        self, batch: ForwardBatch, picks: list[int], offsets: list[int], whole_batch: bool
    ) -> None:
        device = batch.input_ids.device
        lens = [batch.seq_lens[i] for i in picks]
        pool = batch.kv_pool.k
        key_bytes = pool.shape[2] * pool.shape[3] * pool.element_size()
        members: list[list[int]] = [list(range(len(lens)))]  # positions in `picks`
        padded_bytes = len(lens) * max(lens) * key_bytes
        if not self._kernel and padded_bytes >= LARGE_GATHER_BYTES:  # padding is worth saving
            members = []
            for i in sorted(range(len(lens)), key=lens.__getitem__):
                if members and lens[i] <= GROUP_LENGTH_RATIO * lens[members[-1][0]]:
                    members[-1].append(i)
                else:
                    members.append([i])
        whole = whole_batch and len(members) == 1
        for group in members:
            if whole:
                group = list(range(len(lens)))  # keep batch order: no reordering needed
            rows = torch.tensor([batch.table_rows[picks[i]] for i in group], dtype=torch.int64)
            seq = torch.tensor([lens[i] for i in group], dtype=torch.int64)
            longest = int(seq.max())
            # Padding entries point at whatever slot the row held before: always a valid
            # slot, hidden by [lo, hi).
            slots = batch.slot_table[rows, :longest].to(device)
            lo = torch.zeros_like(seq)
            if self.sliding_window is not None:
                lo = (seq - self.sliding_window).clamp_(min=0)
            idx = None
            if not whole:  # the group's query rows in the flattened batch
                token_rows = [offsets[picks[i]] for i in group]
                idx = torch.tensor(token_rows, dtype=torch.int64, device=device)
            self._groups.append(_DecodeGroup(idx, slots, lo.to(device), seq.to(device)))
        if whole_batch and not whole:
            flat_order = [i for group in members for i in group]
            restore = torch.empty(len(flat_order), dtype=torch.int64)
            restore[torch.tensor(flat_order)] = torch.arange(len(flat_order))
            self._restore = restore.to(device)

    def _prepare_kernel_extends(
        self, batch: ForwardBatch, picks: list[int], offsets: list[int]
    ) -> _KernelExtends:
        seqs = [batch.seq_lens[i] for i in picks]
        exts = [batch.extend_lens[i] for i in picks]
        starts = [offsets[i] for i in picks]
        slot_offsets = list(itertools.accumulate(seqs[:-1], initial=0))
        kept = range(batch.num_tokens) if batch.keep_rows is None else batch.keep_rows
        first_kept: list[int | None] = [None] * len(picks)  # per request, from its start
        j = 0
        for row in kept:  # ascending, like the requests' rows
            while j < len(picks) and row >= starts[j] + exts[j]:
                j += 1
            if j == len(picks):
                break
            if row >= starts[j] and first_kept[j] is None:
                first_kept[j] = row - starts[j]
        last = [
            (starts[j] + a, exts[j] - a, slot_offsets[j], seqs[j])
            for j, a in enumerate(first_kept)
            if a is not None
        ]
        return _KernelExtends(
            torch.cat([batch.slot_table[batch.table_rows[i], :n] for i, n in zip(picks, seqs)]),
            request_table(starts, exts, slot_offsets, seqs),
            request_table(*(list(c) for c in zip(*last))) if last else _NO_REQUESTS,
        )

    def _prepare_extend(self, batch: ForwardBatch, picks: list[int], offsets: list[int]) -> None:
        device = batch.input_ids.device
        if self._extend_kernel and device.type == "cpu":
            self._kernel_extends = self._prepare_kernel_extends(batch, picks, offsets)
            return
        for i in picks:
            row, prefix = batch.table_rows[i], batch.prefix_lens[i]
            extend, seq = batch.extend_lens[i], batch.seq_lens[i]
            host_slots = batch.slot_table[row, :seq]
            slots = host_slots.to(device)
            # A context whose slots are one ascending run (a request the pool served from one
            # free run, the usual case) is a slice of the pool: attention reads it in place
            # instead of gathering a copy for every chunk and layer.
            first_slot: int | None = int(host_slots[0])
            if seq > 1 and not bool((host_slots.diff() == 1).all()):
                first_slot = None
            mask = None
            is_causal = True
            if self.sliding_window is not None or prefix > 0:
                q_pos = torch.arange(prefix, seq)[:, None]
                k_pos = torch.arange(seq)[None, :]
                allowed = k_pos <= q_pos
                if self.sliding_window is not None:
                    allowed &= k_pos > q_pos - self.sliding_window
                mask, is_causal = allowed.to(device), False
            self._extends.append(
                _Extend(offsets[i], offsets[i] + extend, slots, first_slot, mask, is_causal)
            )

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
        if self._out_run is not None:  # one ascending run of slots: a plain copy
            k_cache[self._out_run : self._out_run + k.shape[0]].copy_(k)
            v_cache[self._out_run : self._out_run + v.shape[0]].copy_(v)
        else:
            k_cache.index_copy_(0, batch.out_slots, k)
            v_cache.index_copy_(0, batch.out_slots, v)
        if self._kernel_extends is not None:
            out = torch.empty_like(q)
            ext = self._kernel_extends
            last = layer_id == batch.kv_pool.k.shape[0] - 1
            requests = ext.last_layer if last else ext.requests
            if requests.shape[0]:
                paged_extend(
                    q, k_cache, v_cache, ext.slots, requests, self.scale, self.sliding_window, out
                )
        elif self._extends:
            out = torch.empty_like(q)
            self._extend(q, k_cache, v_cache, out)
        else:
            return self._decode(q, k_cache, v_cache)
        for group in self._groups:  # a mixed batch's one-token rows
            assert group.members is not None  # only a whole-batch group has none
            rows = paged_decode(
                q.index_select(0, group.members),
                k_cache,
                v_cache,
                group.slots,
                group.lo,
                group.hi,
                self.scale,
            )
            out.index_copy_(0, group.members, rows)
        return out

    def _decode(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> torch.Tensor:
        outs = []
        for group in self._groups:
            queries = q if group.members is None else q.index_select(0, group.members)
            outs.append(  # [G, H, D]
                paged_decode(queries, k_cache, v_cache, group.slots, group.lo, group.hi, self.scale)
            )
        if self._restore is None:
            return outs[0]
        return torch.cat(outs).index_select(0, self._restore)

    def _extend(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor
    ) -> None:
        gqa = self.num_heads != self.num_kv_heads
        for ext in self._extends:
            if ext.first_slot is not None:
                span = slice(ext.first_slot, ext.first_slot + ext.context_slots.shape[0])
                keys, values = k_cache[span], v_cache[span]  # views of the pool
            else:
                keys = k_cache.index_select(0, ext.context_slots)
                values = v_cache.index_select(0, ext.context_slots)
            keys, values = keys.transpose(0, 1), values.transpose(0, 1)  # [Hkv, S, D]
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
