"""Prompt (extend) attention straight from the paged pool: each request's new tokens over its
whole context, causal, with an optional sliding window.

On CPU this is the C++ kernel `torch.ops.loomlm_cpu.extend_attention` (cpu_kernels/): it packs
each context's keys once per call from wherever their slots lie and runs flash-attention tiles
over them, all requests of a step in one call. `paged_extend_reference` is the same contract in
torch ops (gather, then SDPA with the shifted causal mask): the kernel's test reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..cpu_kernels import build

# The head sizes the kernel is instantiated for; others take torch's SDPA.
KERNEL_HEAD_DIMS = frozenset({8, 16, 32, 64, 80, 96, 128, 256})
# Heads narrower than a vector run their value product one float at a time, and on the
# built-in model (heads of 8) the kernel's logprobs came 1.1e-5 from transformers against
# SDPA's 1e-5 or less: they take the kernel only in batch-invariant mode, which needs it.
NARROW_HEAD_DIMS = frozenset({8})


def kernel_available(device: torch.device, head_dim: int, narrow: bool = False) -> bool:
    """Whether `paged_extend` runs the C++ kernel for heads of `head_dim` on `device` (heads
    in NARROW_HEAD_DIMS only when `narrow`)."""
    if head_dim in NARROW_HEAD_DIMS and not narrow:
        return False
    return head_dim in KERNEL_HEAD_DIMS and device.type == "cpu" and build.load()


def request_table(
    starts: list[int], extends: list[int], slot_offsets: list[int], seq_lens: list[int]
) -> torch.Tensor:
    """The kernel's [R, 4] int64 description of a step's extends: first query row, new tokens,
    offset of the context's slots in the concatenated slot list, context length."""
    rows = list(zip(starts, extends, slot_offsets, seq_lens, strict=True))
    return torch.tensor(rows, dtype=torch.int64).reshape(len(rows), 4)


def paged_extend(
    q: torch.Tensor,  # [T, H, D]
    k_cache: torch.Tensor,  # [S, Hkv, D]
    v_cache: torch.Tensor,  # [S, Hkv, D]
    slots: torch.Tensor,  # [N] int64: every request's context slots, concatenated
    requests: torch.Tensor,  # [R, 4] int64, from `request_table`
    scale: float,
    window: int | None,
    out: torch.Tensor,  # [T, H, D]: the requests' rows are written, others left alone
) -> None:
    """Attention of each request's last `extend` positions over its context of `seq_len`."""
    assert q.dim() == 3 and k_cache.dim() == 3 and out.shape == q.shape, "bad ranks"
    assert q.shape[1] % k_cache.shape[1] == 0 and q.shape[2] == k_cache.shape[2], "bad heads"
    assert slots.dtype == torch.int64 and requests.dtype == torch.int64, "int64 indices"
    if kernel_available(q.device, q.shape[2], narrow=True):  # the caller chose this path
        torch.ops.loomlm_cpu.extend_attention(
            q, k_cache, v_cache, slots, requests, scale, window or 0, out
        )
        return
    paged_extend_reference(q, k_cache, v_cache, slots, requests, scale, window, out)


def paged_extend_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    requests: torch.Tensor,
    scale: float,
    window: int | None,
    out: torch.Tensor,
) -> None:
    """Gather each context, then SDPA with the causal mask shifted by the cached prefix."""
    for start, extend, offset, seq in requests.tolist():
        context = slots[offset : offset + seq]
        keys = k_cache.index_select(0, context).transpose(0, 1)  # [Hkv, S, D]
        values = v_cache.index_select(0, context).transpose(0, 1)
        q_pos = torch.arange(seq - extend, seq, device=q.device)[:, None]
        k_pos = torch.arange(seq, device=q.device)[None, :]
        allowed = k_pos <= q_pos
        if window is not None:
            allowed &= k_pos > q_pos - window
        res = F.scaled_dot_product_attention(
            q[start : start + extend].transpose(0, 1).unsqueeze(0),
            keys.unsqueeze(0),
            values.unsqueeze(0),
            attn_mask=allowed,
            scale=scale,
            enable_gqa=q.shape[1] != k_cache.shape[1],
        )
        out[start : start + extend] = res[0].transpose(0, 1)
