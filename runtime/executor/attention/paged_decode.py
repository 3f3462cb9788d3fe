"""Decode attention straight from the paged pool: one query per request over its keys.

On CPU this is the C++ kernel `torch.ops.loomlm_cpu.paged_decode` (cpu_kernels/): it reads
each K and V row of a request's context once, only the positions in [lo, hi) (padding in the
slot rows costs nothing), and splits long contexts into chunks merged at the end so that a
few long requests still keep every core busy. Elsewhere (GPU, or no C++ compiler) it is
`paged_decode_reference`: gather into a padded block, then SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..cpu_kernels import build

# Positions per task of the C++ kernel: long contexts are split so that a batch of one
# still uses every thread; short ones stay whole (each chunk costs a merge).
DECODE_CHUNK = 256
# The head sizes the kernel is instantiated for (a compile-time loop bound); others take the
# reference path.
KERNEL_HEAD_DIMS = frozenset({8, 16, 32, 64, 80, 96, 128, 256})


def paged_decode_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Gather into a padded block, then SDPA: the portable path and the kernel's reference."""
    batch, length = slots.shape
    shape = (batch, length, *k_cache.shape[1:])  # [B, L, Hkv, D]
    keys = k_cache.index_select(0, slots.reshape(-1)).view(shape).transpose(1, 2)
    values = v_cache.index_select(0, slots.reshape(-1)).view(shape).transpose(1, 2)
    pos = torch.arange(length, device=q.device)[None, :]
    visible = (pos >= lo[:, None]) & (pos < hi[:, None])
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2),  # [B, H, 1, D]
        keys,
        values,
        attn_mask=visible[:, None, None, :],
        scale=scale,
        enable_gqa=q.shape[1] != k_cache.shape[1],
    )
    return out.squeeze(2)


def kernel_available(device: torch.device, head_dim: int) -> bool:
    """Whether `paged_decode` runs the C++ kernel for heads of `head_dim` on `device`."""
    return head_dim in KERNEL_HEAD_DIMS and device.type == "cpu" and build.load()


def paged_decode(
    q: torch.Tensor,  # [B, H, D]
    k_cache: torch.Tensor,  # [S, Hkv, D]
    v_cache: torch.Tensor,  # [S, Hkv, D]
    slots: torch.Tensor,  # [B, L] int64
    lo: torch.Tensor,  # [B] first visible key position (sliding window)
    hi: torch.Tensor,  # [B] one past the last (the context length)
    scale: float,
) -> torch.Tensor:  # [B, H, D]
    """Attention of one query per request over its keys at positions [lo, hi) of `slots`."""
    assert q.dim() == 3 and k_cache.dim() == 3 and slots.dim() == 2, "bad ranks"
    assert q.shape[0] == slots.shape[0] == lo.shape[0] == hi.shape[0], "batch sizes differ"
    assert q.shape[1] % k_cache.shape[1] == 0 and q.shape[2] == k_cache.shape[2], "bad heads"
    assert slots.dtype == torch.int64, "slots must be int64"
    if kernel_available(q.device, q.shape[2]):
        return torch.ops.loomlm_cpu.paged_decode(
            q.contiguous(), k_cache, v_cache, slots, lo, hi, scale, DECODE_CHUNK
        )
    return paged_decode_reference(q, k_cache, v_cache, slots, lo, hi, scale)
