"""Scheduler: iteration-level batching (Orca) over the paged KV pool and the prefix cache.

Every step runs all running requests' decodes, then prompt work under a per-step token
budget: first the next chunk of the prompt being prefilled in pieces (if any), then waiting
requests in the policy's order. A prompt is computed from the end of its longest cached
prefix on. With chunked prefill (Sarathi-Serve) the budget of a step that runs decodes is
`chunked_prefill_size`, and a prompt longer than the budget is split across steps, mixed
with the running decodes, which therefore never stall for long; without it, such a prompt
runs alone in one step.

Memory: when a step needs more KV slots than are free, unlocked cache entries are evicted
first (least recently used), then the most recently admitted requests are preempted: their
KV goes to the cache, where it may survive until they return, and they rejoin the front of
the queue to be recomputed from their prompt and output so far.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

from ..executor.model_runner import ItemResult, ScheduledItem
from ..kvcache.kv_pool import KVPool
from ..kvcache.prefix_cache import NoPrefixCache, PrefixCache, PrefixMatch
from .config import SchedulerConfig
from .output_processor import OutputProcessor
from .policy import SchedulePolicy
from .prefix_index import PrefixIndex
from .request import FinishReason, Request, RequestStatus, internal_error
from .request_kv import RequestKV

logger = logging.getLogger("loomlm.engine")

# A waiting request that shares at least this many not-yet-cached tokens with one admitted in
# the same step waits one step: the shared part is then cached, and computed only once.
DEFER_SHARED_TOKENS = 32


class ScheduledBatch(NamedTuple):
    """One step's work, and the requests that ended while it was being scheduled (they do
    not fit in the KV pool) and have their final event to report."""

    items: list[ScheduledItem]
    finished: list[Request]


@dataclass(slots=True)
class SchedulerStats:
    num_preemptions: int = 0
    num_steps: int = 0
    prompt_tokens: int = 0  # prompt (and recomputed) tokens run through the model
    generated_tokens: int = 0
    cache_hit_tokens: int = 0  # prompt tokens read from the cache, at first admission
    cache_query_tokens: int = 0  # prompt tokens of first admissions

    @property
    def cache_hit_rate(self) -> float:
        return self.cache_hit_tokens / self.cache_query_tokens if self.cache_query_tokens else 0.0


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        pool: KVPool,
        cache: PrefixCache,
        outputs: OutputProcessor,
    ) -> None:
        self.config = config
        self.pool = pool
        self.cache = cache
        self.kv = RequestKV(pool, cache)
        self.outputs = outputs
        self.policy = SchedulePolicy(config.schedule_policy)
        self.waiting: list[Request] = []
        self.running: list[Request] = []  # prompt done: one decode per step
        self.prefilling: Request | None = None  # a prompt part-way through chunked prefill
        self.stats = SchedulerStats()
        self._prompt_items: set[int] = set()  # ids of this step's requests that ran prompt work
        self._dropped_waiting = False  # some waiting requests were aborted (compact_waiting)

    def add(self, req: Request) -> None:
        req.enqueued_step = self.stats.num_steps
        self.waiting.append(req)

    def has_work(self) -> bool:
        self.compact_waiting()
        return bool(self.waiting or self.running or self.prefilling)

    @property
    def num_running(self) -> int:
        return len(self.running) + (self.prefilling is not None)

    def abort(self, req: Request, reason: FinishReason) -> bool:
        """Finish `req` with `reason` (an abort) and free what it holds; False if it has
        already finished. A waiting request leaves the queue at the next compaction (one
        pass for any number of aborts, not a scan per abort)."""
        if req.status.finished:
            return False
        if req.table_row is not None:  # running or part-way through its prompt
            self.kv.release(req)
            self._drop_active(req)
        else:
            self._dropped_waiting = True
        req.finish(reason)
        return True

    def abort_all(self, message: str) -> list[Request]:
        reason = FinishReason("abort", message=message)
        every = self._active() + self.waiting
        return [req for req in every if self.abort(req, reason)]

    def compact_waiting(self) -> None:
        """Drop the aborted requests from the waiting queue."""
        if self._dropped_waiting:
            self.waiting = [r for r in self.waiting if not r.status.finished]
            self._dropped_waiting = False

    def flush_cache(self) -> bool:
        """Empty the prefix cache; refused (False) while any request is in flight."""
        if self.has_work():
            return False
        self.cache.flush()
        return True

    def invalidate_cache(self) -> None:
        """After a weight update: no later request may read KV computed with the old weights.
        Idle, the cache is emptied; otherwise it drops what no request holds and retires the
        rest (freed as the holders end), and the requests holding KV keep it to themselves
        until they end or are preempted (then recomputed with the new weights)."""
        if not self.has_work():
            self.cache.flush()
            return
        for req in self._active():
            req.cacheable = False
        self.cache.retire()

    def retract_all(self) -> int:
        """Send every running request back to the front of the queue, its KV released (to
        the cache where it may be reused): pause_generation(mode="retract")."""
        active = self._active()
        for req in reversed(active):  # each goes to the front: keep their order
            self._drop_active(req)
            self._preempt(req)
        return len(active)

    # -- schedule ----------------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch:
        self.compact_waiting()
        self._prompt_items.clear()
        finished: list[Request] = []
        items = self._schedule_decodes(finished)
        blocked = self._schedule_prompts(items, num_decodes=len(items))
        if not items and blocked is not None and not self.running:
            # Nothing runs and the cache is empty of unlocked entries, yet `blocked` does
            # not fit: it never will.
            self.abort(
                blocked, FinishReason("abort", message="request does not fit in the KV pool")
            )
            self.compact_waiting()
            finished.append(blocked)
        if items:
            self.stats.num_steps += 1
        return ScheduledBatch(items, finished)

    def _schedule_decodes(self, finished: list[Request]) -> list[ScheduledItem]:
        # A decode computes one token, or several after a jump-forward appended forced text.
        while self.running and self.pool.num_free() < (need := self._decode_slots()):
            if self.cache.evict(need - self.pool.num_free()):
                continue
            if self.prefilling is not None:
                self._preempt(self.prefilling)
                self.prefilling = None
                continue
            if len(self.running) == 1:
                # The pool cannot hold even this one request's next tokens.
                req = self.running.pop()
                self.kv.release(req)
                req.finish(FinishReason("length", length=len(req.output_ids)))
                finished.append(req)
                return []
            self._preempt(self.running.pop())
        if not self.running:
            return []
        self.kv.extend_decodes(self.running)  # the loop above made room
        return [ScheduledItem(r, r.num_computed, r.seq_len, True) for r in self.running]

    def _decode_slots(self) -> int:
        """Free slots the running requests' next decode step needs beyond their spare runs."""
        return sum(max(0, r.seq_len - r.num_computed - len(r.spare_slots)) for r in self.running)

    def _schedule_prompts(self, items: list[ScheduledItem], num_decodes: int) -> Request | None:
        """Append this step's prompt work to `items`; returns the request that could not get
        the KV slots it needed, if one blocked the queue."""
        budget = self.config.max_prefill_tokens - num_decodes
        chunk = self.config.chunk_limit
        if chunk is not None and num_decodes:
            # Only decodes can stall behind a prompt: with none running, a long prompt gets
            # the whole budget (and is cut at max_prefill_tokens, not at the chunk size).
            budget = min(budget, chunk)
        # Prompts computed this step, by token prefix: a request that shares a long uncached
        # stretch with one of them waits a step and then finds it cached.
        shares = self.waiting and not isinstance(self.cache, NoPrefixCache)
        admitted = PrefixIndex() if shares else None  # only waiting ones consult it
        if self.prefilling is not None:
            req = self.prefilling
            item = self._next_chunk(req, budget)
            if item is None:
                return req
            items.append(item)
            budget -= item.end - item.start
            if item.end < req.seq_len:
                return None  # the budget went to this chunk
            self.prefilling = None
            self.running.append(req)
            if admitted is not None:
                admitted.add(req.reusable_tokens())
        taken: set[int] = set()
        blocked = None
        if not self.waiting or budget <= 0:
            return None
        order = self.policy.order(self.waiting, self.cache, self.stats.num_steps, self._active())
        for req in order:
            if self.num_running >= self.config.max_running_requests or budget <= 0:
                break
            tokens = req.reusable_tokens()
            match = self.cache.match_prefix(tokens)
            if admitted is not None and (
                admitted.shared_length(tokens) - match.length >= DEFER_SHARED_TOKENS
            ):
                continue
            item = self._admit(req, match, budget, alone=not items)
            if item is None:
                blocked = req
                break
            items.append(item)
            taken.add(id(req))
            budget -= item.end - item.start
            if admitted is not None:
                admitted.add(tokens)
            if item.end < req.seq_len:
                self.prefilling = req
                break
            self.running.append(req)
        if taken:
            self.waiting = [r for r in self.waiting if id(r) not in taken]
        return blocked

    def _admit(
        self, req: Request, match: PrefixMatch, budget: int, alone: bool
    ) -> ScheduledItem | None:
        """Give `req` a row, its cached prefix and slots for (a chunk of) the rest."""
        self.cache.lock(match)  # before anything is evicted to make room
        take = req.seq_len - match.length
        if take > budget:
            if self.config.chunk_limit is not None:
                take = budget
            elif not alone:
                self.cache.unlock(match)
                return None
        # Keep one slot per running request free after this admission, so that the next
        # decode step does not immediately preempt what was just admitted.
        if not self.kv.reserve(take + self._decode_slots() + 1):
            self.cache.unlock(match)
            return None
        self.kv.attach(req, match, take)
        start = match.length
        req.status = RequestStatus.RUNNING
        if req.num_preemptions == 0:
            req.cached_tokens = start
            self.stats.cache_hit_tokens += start
            self.stats.cache_query_tokens += len(req.prompt_ids)
        return self._prompt_item(req, start, start + take)

    def _next_chunk(self, req: Request, budget: int) -> ScheduledItem | None:
        take = min(req.seq_len - req.num_computed, budget)
        if take <= 0 or not self.kv.reserve(take + self._decode_slots() + 1):
            return None
        self.kv.extend(req, take)
        return self._prompt_item(req, req.num_computed, req.num_computed + take)

    def _prompt_item(self, req: Request, start: int, end: int) -> ScheduledItem:
        self._prompt_items.add(id(req))
        self.stats.prompt_tokens += end - start
        sample = end == req.seq_len and len(req.output_ids) < req.params.max_new_tokens
        return ScheduledItem(req, start, end, sample)

    # -- process -----------------------------------------------------------------------------
    def process(
        self, items: list[ScheduledItem], results: list[ItemResult | BaseException]
    ) -> list[Request]:
        """Apply one step's results; returns the requests that have something new to report.
        A result that is an exception (the item failed alone) or that raises while applied
        ends that request alone with an internal error."""
        touched = []
        for item, res in zip(items, results):
            req = item.req
            touched.append(req)
            self.kv.computed(req, item.end)
            if not isinstance(res, BaseException):
                try:
                    self.outputs.apply(item, res)
                    if item.sample:
                        self.stats.generated_tokens += 1
                    continue
                except Exception as exc:
                    logger.exception("request %s failed while its results were applied", req.rid)
                    res = exc
            self._fail(item, internal_error(res))
        finished = [r for r in touched if r.status.finished and r.table_row is not None]
        for req in finished:
            self.kv.release(req)
            self._drop_active(req)
        for req in touched:
            # Prompt KV goes to the cache as soon as it is computed, so that requests
            # running at the same time already share it.
            if id(req) in self._prompt_items and not req.status.finished:
                self.kv.commit(req)
        return touched

    def _fail(self, item: ScheduledItem, reason: FinishReason) -> None:
        """Abort `item`'s request, freeing every slot it was given for this step (the error
        stands even if the request had just finished otherwise)."""
        req = item.req
        self.kv.release(req, keep_kv=False)  # this step's KV may be half written
        self._drop_active(req)
        req.finish(reason)

    # -- membership ----------------------------------------------------------------------
    def _preempt(self, req: Request) -> None:
        self.kv.release(req)
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        req.enqueued_step = self.stats.num_steps
        self.stats.num_preemptions += 1
        self.waiting.insert(0, req)

    def _active(self) -> list[Request]:
        return self.running + ([self.prefilling] if self.prefilling is not None else [])

    def _drop_active(self, req: Request) -> None:
        if req is self.prefilling:
            self.prefilling = None
        elif req in self.running:
            self.running.remove(req)
