"""KVPool: the key/value cache of every layer, allocated once, handed out one token slot at a time.

Slots are plain integers into one big tensor per K and V; the free list is a tensor of slot
ids, so allocating and freeing n slots costs a slice and a concatenation, never n Python
objects. Each running request also owns one row of `slot_table`, which lists its slots in
token order (SGLang's req_to_token table).
"""

from __future__ import annotations

import torch

from ..utils.host_memory import lazily_zeroed


class KVPool:
    def __init__(
        self,
        num_slots: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        max_requests: int,
        max_context: int,
    ) -> None:
        if num_slots < 1:
            raise ValueError(f"max_total_tokens: must be >= 1, got {num_slots}")
        self.num_slots = num_slots
        self.device = device
        shape = (num_layers, num_slots, num_kv_heads, head_dim)
        if device.type == "cpu":  # pages come on first write, not all at start-up
            self.k, self.v = lazily_zeroed(shape, dtype), lazily_zeroed(shape, dtype)
        else:
            self.k = torch.zeros(shape, dtype=dtype, device=device)
            self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._free = torch.arange(num_slots, dtype=torch.int64)
        # Row r lists the slots of the request holding row r, in token order.
        self.slot_table = torch.zeros((max_requests, max_context), dtype=torch.int64)
        self._free_rows = list(range(max_requests - 1, -1, -1))
        self.max_requests = max_requests

    @property
    def bytes_per_token(self) -> int:
        layers, _, heads, dim = self.k.shape
        return 2 * layers * heads * dim * self.k.element_size()

    # -- token slots -------------------------------------------------------------------------
    def num_free(self) -> int:
        return int(self._free.shape[0])

    def alloc(self, n: int) -> torch.Tensor | None:
        """n free slots (int64, host), or None when fewer than n are free."""
        if n > self._free.shape[0]:
            return None
        slots, self._free = self._free[:n], self._free[n:]
        return slots

    def free(self, slots: torch.Tensor) -> None:
        # To the back: the pool is walked through before a slot is reused. Reusing the slots
        # freed last first (fewer first-write page faults on the lazily mapped CPU pool)
        # measured slower while decode took one slot per step (batch-32 float32 decode
        # 387-438 tok/s against 511-535; benchmark model, AVX-512 EPYC, alternating runs),
        # and the same since decode slots come in runs (550-559 against 542-576).
        if slots.numel():
            self._free = torch.cat((self._free, slots))

    # -- request rows ------------------------------------------------------------------------
    def num_free_rows(self) -> int:
        return len(self._free_rows)

    def alloc_row(self) -> int | None:
        return self._free_rows.pop() if self._free_rows else None

    def free_row(self, row: int) -> None:
        self._free_rows.append(row)
