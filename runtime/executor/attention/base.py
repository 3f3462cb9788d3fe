"""The attention backend interface: the one place the model touches the paged KV pool."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..forward_context import ForwardBatch


class AttentionBackend(ABC):
    """Causal attention of a flattened batch over the paged KV pool.

    Invariants a backend relies on:
    - `prepare(batch)` is called once per forward, before any layer; per-step metadata is
      built there, never per layer.
    - In `forward`, the new tokens' k/v are written to `batch.out_slots` first; the slots
      `slot_table[row, :seq_len]` of every request are then all valid, and a request's query
      at position p attends exactly its keys at positions <= p (and > p - sliding_window).
    """

    @abstractmethod
    def prepare(self, batch: ForwardBatch) -> None: ...

    @abstractmethod
    def forward(
        self,
        layer_id: int,
        q: torch.Tensor,  # [T, H, D]
        k: torch.Tensor,  # [T, Hkv, D]
        v: torch.Tensor,  # [T, Hkv, D]
        batch: ForwardBatch,
    ) -> torch.Tensor:  # [T, H, D]
        ...
