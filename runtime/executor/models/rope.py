"""Rotary position embeddings (rotate-half layout, as Hugging Face checkpoints store q/k)."""

from __future__ import annotations

import math

import torch

from .config import RopeConfig


def inverse_frequencies(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    inv_freq = 1.0 / (
        rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    )
    if rope.kind == "linear":
        return inv_freq / rope.factor
    if rope.kind == "llama3":
        # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, a smooth blend between.
        low_wavelen = rope.original_max_position_embeddings / rope.low_freq_factor
        high_wavelen = rope.original_max_position_embeddings / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (rope.original_max_position_embeddings / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor
        )
        blended = (1 - smooth) * scaled / rope.factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(is_medium, blended, scaled)
    return inv_freq


class RotaryEmbedding:
    """Caches cos/sin for every position once; a call indexes them by absolute position.

    A plain object rather than module buffers: the model is built on the meta device and
    materialised empty, and these tables must survive that (they are always built on the host).
    """

    def __init__(self, rope: RopeConfig, head_dim: int, max_positions: int) -> None:
        with torch.device("cpu"):  # even while the model around it is built on "meta"
            inv_freq = inverse_frequencies(rope, head_dim)
            t = torch.arange(max_positions, dtype=torch.float32)
            freqs = torch.outer(t, inv_freq)  # [max_positions, head_dim / 2]
            emb = torch.cat((freqs, freqs), dim=-1)  # [max_positions, head_dim]
            self.cos = emb.cos()
            self.sin = emb.sin()

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> RotaryEmbedding:
        """Move the tables, and cast them to the model's dtype once (computed in float32 and
        cast, as transformers does per call). A compiled forward then reads them as they are."""
        self.cos, self.sin = self.cos.to(device, dtype), self.sin.to(device, dtype)
        return self

    def __call__(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # q: [T, H, D], k: [T, Hkv, D]; cos/sin: [T, 1, D]
        cos = self.cos[positions].unsqueeze(1).to(q.dtype)  # no-op in the model's own dtype
        sin = self.sin[positions].unsqueeze(1).to(q.dtype)
        return _apply(q, cos, sin), _apply(k, cos, sin)


def _apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
