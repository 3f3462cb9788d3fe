"""Scheduler: iteration-level batching (Orca) over the paged KV pool.

Every step runs all running requests' decodes plus as many waiting prefills as the per-step
token budget and the free KV slots allow, in arrival order (FCFS; a request that does not
fit blocks those behind it so that none starves). When a decode step would not fit, the most
recently admitted requests are preempted: their slots are freed and they rejoin the front
of the queue, to be recomputed from their prompt and output so far.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from .kv_pool import KVPool
from .model_runner import ItemResult, ScheduledItem
from .output_processor import OutputProcessor
from .request import FinishReason, Request, RequestStatus


@dataclass(slots=True)
class SchedulerConfig:
    max_running_requests: int = 256
    max_prefill_tokens: int = 8192  # per-step token budget for prompt tokens

    def __post_init__(self) -> None:
        if self.max_running_requests < 1:
            raise ValueError(f"max_running_requests: must be >= 1, got {self.max_running_requests}")
        if self.max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens: must be >= 1, got {self.max_prefill_tokens}")


@dataclass(slots=True)
class SchedulerStats:
    num_preemptions: int = 0
    num_steps: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0


class Scheduler:
    def __init__(self, config: SchedulerConfig, pool: KVPool, outputs: OutputProcessor) -> None:
        self.config = config
        self.pool = pool
        self.outputs = outputs
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.stats = SchedulerStats()
        # Requests that ended while being scheduled rather than in a step (the engine reports them).
        self.finished_unscheduled: list[Request] = []

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def abort(self, rid: str, message: str = "aborted") -> Request | None:
        """Finish request `rid` as aborted and free what it holds; None if it is unknown."""
        for req in self.waiting:
            if req.rid == rid:
                self.waiting.remove(req)
                req.finish(RequestStatus.FINISHED_ABORT, FinishReason("abort", message=message))
                return req
        for req in self.running:
            if req.rid == rid:
                self._release(req)
                self.running.remove(req)
                req.finish(RequestStatus.FINISHED_ABORT, FinishReason("abort", message=message))
                return req
        return None

    # -- schedule ----------------------------------------------------------------------------
    def schedule(self) -> list[ScheduledItem]:
        items = self._schedule_decodes()
        items += self._schedule_prefills(num_decodes=len(items))
        if items:
            self.stats.num_steps += 1
        return items

    def _schedule_decodes(self) -> list[ScheduledItem]:
        while self.running and self.pool.num_free() < len(self.running):
            if len(self.running) == 1:
                # The pool cannot hold even this one request's next token.
                req = self.running.pop()
                self._release(req)
                req.finish(
                    RequestStatus.FINISHED_LENGTH,
                    FinishReason("length", length=len(req.output_ids)),
                )
                self.finished_unscheduled.append(req)
                return []
            self._preempt(self.running.pop())
        if not self.running:
            return []
        slots = self.pool.alloc(len(self.running))
        assert slots is not None  # guaranteed by the loop above
        rows = torch.tensor([r.table_row for r in self.running])
        cols = torch.tensor([r.num_computed for r in self.running])
        self.pool.slot_table[rows, cols] = slots
        return [ScheduledItem(r, r.num_computed, r.seq_len, True) for r in self.running]

    def _schedule_prefills(self, num_decodes: int) -> list[ScheduledItem]:
        items: list[ScheduledItem] = []
        budget = self.config.max_prefill_tokens - num_decodes
        while self.waiting:
            req = self.waiting[0]
            extend = req.seq_len - req.num_computed
            batch_empty = num_decodes == 0 and not items
            if len(self.running) >= self.config.max_running_requests:
                break
            if extend > budget and not batch_empty:
                break
            # Keep one slot per running request free after this admission, so that the
            # next decode step does not immediately preempt what was just admitted.
            if self.pool.num_free() < extend + len(self.running) + 1:
                break
            row = self.pool.alloc_row()
            if row is None:
                break
            self.waiting.popleft()
            slots = self.pool.alloc(extend)
            req.table_row = row
            self.pool.slot_table[row, req.num_computed : req.seq_len] = slots
            req.status = RequestStatus.RUNNING
            sample = len(req.output_ids) < req.params.max_new_tokens
            items.append(ScheduledItem(req, req.num_computed, req.seq_len, sample))
            self.running.append(req)
            budget -= extend
            self.stats.prompt_tokens += extend
        return items

    # -- process -----------------------------------------------------------------------------
    def process(self, items: list[ScheduledItem], results: list[ItemResult]) -> list[Request]:
        """Apply one step's results; returns the requests that have something new to report."""
        touched = []
        for item, res in zip(items, results):
            self.outputs.apply(item, res)
            if item.sample:
                self.stats.generated_tokens += 1
            touched.append(item.req)
        finished = [r for r in touched if r.status.finished]
        if finished:
            for req in finished:
                self._release(req)
            done = {id(r) for r in finished}
            self.running = [r for r in self.running if id(r) not in done]
        return touched

    def fail(self, items: list[ScheduledItem], message: str) -> list[Request]:
        """A step raised: abort its requests, freeing every slot they were given for it."""
        failed = []
        for item in items:
            req = item.req
            req.num_computed = item.end  # slots up to `end` were allocated for this step
            self._release(req)
            if req in self.running:
                self.running.remove(req)
            req.finish(RequestStatus.FINISHED_ABORT, FinishReason("abort", message=message))
            failed.append(req)
        return failed

    def abort_all(self, message: str) -> list[Request]:
        rids = [r.rid for r in self.waiting] + [r.rid for r in self.running]
        return [req for rid in rids if (req := self.abort(rid, message)) is not None]

    # -- memory ------------------------------------------------------------------------------
    def _preempt(self, req: Request) -> None:
        self._release(req)
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        self.stats.num_preemptions += 1
        self.waiting.appendleft(req)

    def _release(self, req: Request) -> None:
        if req.table_row is None:
            return
        self.pool.free(self.pool.slot_table[req.table_row, : req.num_computed].clone())
        self.pool.free_row(req.table_row)
        req.table_row = None
        req.num_computed = 0
