"""ForwardBatch: everything one forward pass needs to know, built once per engine step.

The model's layers read it through `current()` instead of threading it through every
signature (the attention layers are the only readers).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..kvcache.kv_pool import KVPool
    from .attention.base import AttentionBackend


@dataclass(slots=True)
class ForwardBatch:
    """A flattened batch: the new tokens of every request laid end to end.

    Request i contributes `extend_lens[i]` new tokens at positions
    `prefix_lens[i] .. prefix_lens[i] + extend_lens[i] - 1`; its whole context after this
    forward occupies the KV slots `slot_table[table_rows[i], :seq_lens[i]]`.
    """

    input_ids: torch.Tensor  # [T] int64, device
    positions: torch.Tensor  # [T] int64, device
    out_slots: torch.Tensor  # [T] int64, device: KV slots the new tokens are written to
    table_rows: list[int]
    prefix_lens: list[int]
    extend_lens: list[int]
    seq_lens: list[int]
    slot_table: torch.Tensor  # [max_requests, max_context] int64, host or device
    kv_pool: KVPool
    attention: AttentionBackend
    # Ascending token rows whose outputs the model keeps past the last layer's attention (see
    # LlamaForCausalLM.forward); None: all of them. The backend may skip the others' queries.
    keep_rows: list[int] | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def is_decode(self) -> bool:
        return all(n == 1 for n in self.extend_lens)


_current: ForwardBatch | None = None


def current() -> ForwardBatch:
    if _current is None:
        raise RuntimeError("no forward in progress: the model must be called by ModelRunner")
    return _current


@contextmanager
def forward_scope(batch: ForwardBatch) -> Iterator[ForwardBatch]:
    global _current
    _current = batch
    try:
        yield batch
    finally:
        _current = None
