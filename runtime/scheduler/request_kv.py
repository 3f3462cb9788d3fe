"""Where a request's KV lives: its row of the slot table, the cached prefix it reads, and the
hand-over of what it computed to the prefix cache.

A running request's row lists one slot per token it has computed. The first
`req.prefix.length` belong to the prefix cache (locked while the request holds them); the
rest are the request's own until `commit` (after each prompt chunk) or `release` (when it
finishes, is preempted or aborted) gives them to the cache.
"""

from __future__ import annotations

import torch

from ..kvcache.kv_pool import KVPool
from ..kvcache.prefix_cache import PrefixCache, PrefixMatch
from .request import Request

# Decode slots are handed to a request this many at a time, so that its generated tokens'
# KV lies in runs the decode attention streams, not one slot per step interleaved with every
# other request's. Benchmark model, float32, AVX-512 EPYC, alternating runs: decode at
# batch 32 528-552 tok/s against 505-508 one slot at a time (batch 8: 341-356 against
# 316-343); runs of 64 measured 540-548. A request's unused spare slots (at most 15) are
# freed when it ends.
DECODE_RUN = 16


class RequestKV:
    def __init__(self, pool: KVPool, cache: PrefixCache) -> None:
        self.pool = pool
        self.cache = cache

    def reserve(self, n: int) -> bool:
        """Make n slots free, evicting from the cache if needed; False if it cannot."""
        short = n - self.pool.num_free()
        if short > 0:
            self.cache.evict(short)
        return self.pool.num_free() >= n

    def attach(self, req: Request, match: PrefixMatch, take: int) -> None:
        """Give `req` a row holding its (locked) cached prefix and `take` new slots after it.
        The caller has reserved the slots."""
        row = self.pool.alloc_row()
        assert row is not None  # one row per running request, checked by the scheduler
        start = match.length
        self.pool.slot_table[row, :start] = match.slots
        self.pool.slot_table[row, start : start + take] = self._alloc(take)
        req.table_row, req.num_computed, req.prefix = row, start, match
        req.cacheable = True  # its KV is computed from here on with the weights of now

    def extend(self, req: Request, take: int) -> None:
        """`take` more slots after the computed ones (the next prompt chunk); reserved."""
        start = req.num_computed
        self.pool.slot_table[req.table_row, start : start + take] = self._alloc(take)

    def extend_decodes(self, reqs: list[Request]) -> None:
        """Slots for each running request's uncomputed tokens: one per step, more after a
        jump-forward; reserved. They come from the request's spare run of DECODE_RUN slots,
        a new run when that is used up and the pool has room, else one by one."""
        counts = [r.seq_len - r.num_computed for r in reqs]
        short = [n - len(r.spare_slots) for r, n in zip(reqs, counts)]
        runs = [max(k, DECODE_RUN) if k > 0 else 0 for k in short]
        # Runs only while the pool keeps room for another run per request after these: held
        # spare slots must not be what forces an eviction or a preemption in a full pool.
        if self.pool.num_free() < sum(runs) + DECODE_RUN * len(reqs):
            runs = [max(k, 0) for k in short]
        # Most steps every request decodes from its spare run and nothing is allocated.
        total = sum(runs)
        fresh = self._alloc(total).tolist() if total else []  # plain ints: this runs every step
        taken: list[int] = []
        start = 0
        for req, n, run in zip(reqs, counts, runs):
            spare = req.spare_slots
            if run:
                spare = spare + fresh[start : start + run]
                start += run
            taken += spare[:n]
            req.spare_slots = spare[n:]
        rows = torch.tensor([r.table_row for r, n in zip(reqs, counts) for _ in range(n)])
        cols = torch.tensor([r.num_computed + k for r, n in zip(reqs, counts) for k in range(n)])
        self.pool.slot_table[rows, cols] = torch.tensor(taken, dtype=torch.int64)

    def computed(self, req: Request, end: int) -> None:
        """The step computed `req`'s KV up to `end` (the slots were given it when scheduled)."""
        if req.table_row is not None:
            req.num_computed = end

    def commit(self, req: Request) -> None:
        """Hand the computed KV to the cache while the request runs on: requests arriving
        meanwhile already share it."""
        if not req.cacheable:  # computed partly with weights replaced since: kept to itself
            return
        n = req.num_computed
        assert req.prefix is not None  # it runs
        row = self.pool.slot_table[req.table_row]
        match = self.cache.cache_running(req.fill_slice(0, n), row[:n].clone(), req.prefix)
        row[: match.length] = match.slots  # the cache's copies replace any duplicates
        req.prefix = match

    def release(self, req: Request, keep_kv: bool = True) -> None:
        """Give back the request's row; its KV goes to the cache, or is freed when it may be
        half written (a failed step) or was computed partly with replaced weights."""
        if req.table_row is None:
            return
        assert req.prefix is not None  # a request with a row holds its cached prefix
        n = req.num_computed
        slots = self.pool.slot_table[req.table_row, :n].clone()
        if keep_kv and req.cacheable:
            self.cache.cache_finished(req.fill_slice(0, n), slots, req.prefix)
        else:
            self.cache.unlock(req.prefix)
            self.pool.free(slots[req.prefix.length :])
        if req.spare_slots:
            self.pool.free(torch.tensor(req.spare_slots, dtype=torch.int64))
            req.spare_slots = []
        self.pool.free_row(req.table_row)
        req.table_row, req.num_computed, req.prefix = None, 0, None

    def _alloc(self, n: int) -> torch.Tensor:
        slots = self.pool.alloc(n)
        assert slots is not None  # the scheduler reserved them
        return slots
