"""Decode attention straight from the paged pool, without materialising the gathered keys.

The eager path (`paged_decode_reference`) gathers every request's keys and values into a
padded copy and runs SDPA on it: on a CPU that reads the KV cache, writes it again and reads
the copy back, and decode is memory-bound. Written as plain tensor algebra and compiled by
torch inductor, the gather is fused into the reductions as indirect loads, so each key and
value is read once. `paged_decode` uses the compiled kernel on CPU when the gather it saves
is large, and falls back to the reference (with a warning, once) where compilation is
unavailable.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F

logger = logging.getLogger("loomlm.attention")


def _decode_math(
    q: torch.Tensor,  # [B, H, D]
    k_cache: torch.Tensor,  # [S, Hkv, D]
    v_cache: torch.Tensor,  # [S, Hkv, D]
    slots: torch.Tensor,  # [B, L] int64
    lo: torch.Tensor,  # [B] first visible key position
    hi: torch.Tensor,  # [B] one past the last
    scale: float,
) -> torch.Tensor:  # [B, H, D]
    batch, heads, dim = q.shape
    kv_heads = k_cache.shape[1]
    qg = q.float().view(batch, 1, kv_heads, heads // kv_heads, dim)  # [B, 1, Hkv, G, D]
    keys = k_cache[slots].float()  # [B, L, Hkv, D]: an indirect load once compiled
    scores = (qg * keys[:, :, :, None, :]).sum(-1) * scale  # [B, L, Hkv, G]
    pos = torch.arange(slots.shape[1], device=q.device)[None, :]
    visible = (pos >= lo[:, None]) & (pos < hi[:, None])  # [B, L]
    scores = scores.masked_fill(~visible[:, :, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=1)
    values = v_cache[slots].float()  # [B, L, Hkv, D]
    out = (probs[..., None] * values[:, :, :, None, :]).sum(1)  # [B, Hkv, G, D]
    return out.reshape(batch, heads, dim).to(q.dtype)


def paged_decode_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Gather into a padded block, then SDPA: the eager path and the kernel's reference."""
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


_compiled: Callable[..., torch.Tensor] | None = None
_compile_failed = os.environ.get("LOOMLM_DISABLE_COMPILE", "") not in ("", "0")
_lock = threading.Lock()


# Below this many bytes of gathered keys, moving them is cheap and fixed per-call costs
# dominate: the compiled call's guards and dispatch (~0.2 ms measured on the benchmark
# machine) do not pay off, and neither do extra calls to save padding.
LARGE_GATHER_BYTES = 2 << 20


def paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention of one query per request over its keys at positions [lo, hi) of `slots`."""
    assert q.dim() == 3 and k_cache.dim() == 3 and slots.dim() == 2, "bad ranks"
    assert q.shape[0] == slots.shape[0] == lo.shape[0] == hi.shape[0], "batch sizes differ"
    assert q.shape[1] % k_cache.shape[1] == 0 and q.shape[2] == k_cache.shape[2], "bad heads"
    assert slots.dtype == torch.int64, "slots must be int64"
    gathered = slots.numel() * k_cache.shape[1] * k_cache.shape[2] * k_cache.element_size()
    if q.device.type != "cpu" or _compile_failed or gathered < LARGE_GATHER_BYTES:
        return paged_decode_reference(q, k_cache, v_cache, slots, lo, hi, scale)
    return paged_decode_compiled(q, k_cache, v_cache, slots, lo, hi, scale)


def paged_decode_compiled(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """The inductor-compiled kernel (falls back to the reference if compilation fails)."""
    global _compiled, _compile_failed
    if _compile_failed:
        return paged_decode_reference(q, k_cache, v_cache, slots, lo, hi, scale)
    try:
        if _compiled is None:
            with _lock:
                if _compiled is None:
                    _compiled = torch.compile(_decode_math, dynamic=True)
        return _compiled(q, k_cache, v_cache, slots, lo, hi, scale)
    except Exception as exc:  # no C++ compiler, unsupported platform...
        _compile_failed = True
        logger.warning("compiled decode attention unavailable, using the eager path: %s", exc)
        return paged_decode_reference(q, k_cache, v_cache, slots, lo, hi, scale)


def warm_up(num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> None:
    """Compile now, for every size specialisation, rather than during someone's request.

    torch.compile(dynamic=True) still specialises dimensions of size 1, so batch 1 and
    length 1 each get their own kernel; after this, no shape seen in serving compiles.
    """
    if _compile_failed:
        return
    with torch.inference_mode():  # the runner's mode: a compile is specific to the grad mode
        _warm_up(num_heads, num_kv_heads, head_dim, dtype)


def _warm_up(num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> None:
    k_cache = torch.zeros(4, num_kv_heads, head_dim, dtype=dtype)
    for batch in (1, 2):
        for length in (1, 2):
            paged_decode_compiled(
                torch.zeros(batch, num_heads, head_dim, dtype=dtype),
                k_cache,
                k_cache,
                torch.zeros(batch, length, dtype=torch.int64),
                torch.zeros(batch, dtype=torch.int64),
                torch.full((batch,), length, dtype=torch.int64),
                1.0,
            )
