"""The engine thread: schedule -> forward -> process, forever, fed through a thread-safe inbox."""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import NamedTuple

from .checks import shown
from .errors import EngineDeadError, EngineOverloadedError
from .model_runner import ItemResult, ModelRunner, ScheduledItem
from .output_processor import OutputProcessor
from .outputs import GenerateOutput, StreamChunk
from .request import FinishReason, Request, internal_error
from .scheduler import Scheduler
from .threads import start_thread

logger = logging.getLogger("loomlm.engine")

Event = StreamChunk | GenerateOutput


class ArrivalWait(NamedTuple):
    """How the engine, starting from an empty batch, waits for the rest of a burst.

    The requests of one burst (a batch job's clients, the next wave of a closed loop, a
    program's branches sent over HTTP) reach the engine over a few milliseconds. Stepping on
    the first alone leaves the rest to join behind its decode, where chunked prefill admits
    one prompt chunk per step: 64 streams over HTTP lost 17-35% of their throughput to that
    on CPU (bench serving, against the same requests submitted at one instant). So the
    engine first waits until `gap` seconds pass with nothing new, `limit` seconds at most.
    """

    gap: float
    limit: float


NO_ARRIVAL_WAIT = ArrivalWait(0.0, 0.0)


class EngineLoop:
    """Runs the engine thread and is its only door: requests, aborts and calls go through a
    thread-safe inbox and are handled between steps.

    Containment: whatever one request makes fail (its results, its detokenization, its
    stop strings, its grammar matcher, a batched forward that raises because of it) ends
    that request alone with an internal error, and the others step on. Should the thread
    itself fail, every request in flight and every later submission gets EngineDeadError,
    so no caller waits forever.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        runner: ModelRunner,
        outputs: OutputProcessor,
        arrival_wait: ArrivalWait = NO_ARRIVAL_WAIT,
        max_queued_requests: int | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.outputs = outputs
        self.arrival_wait = arrival_wait
        self.max_queued_requests = max_queued_requests
        self._inbox: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = False
        # Requests submitted and not yet finished, by id: counted against the queue limit,
        # and found by id in O(1) for aborts. Written under `_lock` by submitters and the
        # engine thread alike.
        self._lock = threading.Lock()
        self._requests: dict[str, Request] = {}
        self.error: BaseException | None = None  # why the engine thread died, if it did
        self._thread = start_thread(self._run, "loomlm-engine")

    # -- called from any thread --------------------------------------------------------------
    def submit(self, reqs: list[Request]) -> None:
        """Queue requests, all or none: EngineOverloadedError past the queue limit,
        ValueError for an id already in flight, EngineDeadError once the thread died."""
        with self._lock:
            self._check_open()
            limit = self.max_queued_requests
            if limit is not None and len(self._requests) + len(reqs) > limit:
                raise EngineOverloadedError(
                    f"{len(self._requests)} requests are in flight and {len(reqs)} more would "
                    f"pass the limit of {limit} (max_queued_requests); retry later"
                )
            taken = [r.rid for r in reqs if r.rid in self._requests]
            if taken or len({r.rid for r in reqs}) != len(reqs):
                raise ValueError(f"rid: {shown(taken or [r.rid for r in reqs])} already in flight")
            for req in reqs:
                self._requests[req.rid] = req
                self._inbox.put(("add", req))
        self._wake.set()

    def abort(self, rid: str) -> None:
        self._inbox.put(("abort", rid))
        self._wake.set()

    def abort_all(self, message: str) -> None:
        self._inbox.put(("abort_all", message))
        self._wake.set()

    def call(self, fn: Callable[[], object]) -> object:
        """Run `fn` on the engine thread between steps and return its result."""
        done: queue.SimpleQueue[tuple[bool, object]] = queue.SimpleQueue()
        with self._lock:
            self._check_open()
            self._inbox.put(("call", (fn, done)))
        self._wake.set()
        while True:
            try:
                ok, value = done.get(timeout=0.5)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    self._check_open()
                    raise RuntimeError("the engine thread has stopped") from None
        if not ok:
            raise value  # type: ignore[misc]
        return value

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def num_in_flight(self) -> int:
        return len(self._requests)

    def _check_open(self) -> None:
        if self.error is not None:
            raise EngineDeadError(f"the engine thread died: {_describe(self.error)}")
        if self._stopping:
            raise RuntimeError("the engine has been shut down")

    # -- the engine thread ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # a fault outside any one request: nothing can go on
            logger.critical("the engine thread died: %s", traceback.format_exc())
            self._die(exc)

    def _serve(self) -> None:
        while True:
            self._drain_inbox()
            if self._stopping:
                for req in self.scheduler.abort_all("engine shut down"):
                    self._emit(req)
                self._drain_inbox()
                return
            if not self.scheduler.has_work():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            if self.scheduler.num_running == 0 and self.arrival_wait.gap > 0:
                self._await_burst()  # starting from an empty batch
            self._step()

    def _die(self, exc: BaseException) -> None:
        """Fail every request in flight, and every one queued since, with EngineDeadError."""
        with self._lock:
            self.error = exc
            pending = list(self._requests.values())
            self._requests.clear()
        dead = EngineDeadError(f"the engine thread died: {_describe(exc)}")
        for req in pending:
            _deliver(req, dead)
        while True:  # calls queued before the door closed
            try:
                kind, value = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "call":
                value[1].put((False, dead))  # type: ignore[index]

    def _await_burst(self) -> None:
        deadline = time.perf_counter() + self.arrival_wait.limit
        while not self._stopping:
            self._drain_inbox()
            left = deadline - time.perf_counter()
            if left <= 0 or not self._wake.wait(min(self.arrival_wait.gap, left)):
                return
            self._wake.clear()

    def _step(self) -> None:
        sched = self.scheduler
        items = sched.schedule()
        for req in sched.finished_unscheduled:
            self._emit(req)
        sched.finished_unscheduled.clear()
        if not items:
            return
        try:
            results: list[ItemResult | BaseException] = list(self.runner.forward(items))
        except Exception as exc:
            logger.error("step failed: %s", traceback.format_exc())
            results = [exc] if len(items) == 1 else self._forward_each(items)
        for req in sched.process(items, results):
            self._emit(req)

    def _forward_each(self, items: list[ScheduledItem]) -> list[ItemResult | BaseException]:
        """A batched forward raised: run each item alone, so that only the request that
        makes it fail fails. (Rewriting the KV of the items that succeed is harmless: the
        same positions get the same values.)"""
        results: list[ItemResult | BaseException] = []
        for item in items:
            try:
                results.append(self.runner.forward([item])[0])
            except Exception as exc:
                logger.error("request %s failed alone: %s", item.req.rid, traceback.format_exc())
                results.append(exc)
        return results

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, value = self._inbox.get_nowait()
            except queue.Empty:
                self.scheduler.compact_waiting()
                return
            if kind == "add":
                self.scheduler.add(value)  # type: ignore[arg-type]
            elif kind == "abort":
                req = self._requests.get(value)  # type: ignore[arg-type]
                if req is not None and self.scheduler.abort(req, ABORTED):
                    self._emit(req)
            elif kind == "abort_all":
                for req in self.scheduler.abort_all(value):  # type: ignore[arg-type]
                    self._emit(req)
            else:
                fn, done = value  # type: ignore[misc]
                try:
                    done.put((True, fn()))
                except BaseException as exc:  # handed back to the caller
                    done.put((False, exc))

    def _emit(self, req: Request) -> None:
        if req.status.finished:
            event = self._final_event(req)
            with self._lock:
                self._requests.pop(req.rid, None)
        elif req.stream:
            try:
                text_end = max(req.streamed_chars, len(req.text) - self.outputs.held_back(req))
            except Exception as exc:
                logger.exception("request %s failed", req.rid)
                self.scheduler.abort(req, internal_error(exc))
                return self._emit(req)
            if text_end == req.streamed_chars and len(req.output_ids) == req.streamed_ids:
                return  # nothing new (a prefill chunk, or text held back)
            event = self._chunk(req, text_end, None)
        else:
            return
        if not _deliver(req, event) and not req.status.finished:
            self.scheduler.abort(req, FinishReason("abort", message="consumer gone"))
            with self._lock:
                self._requests.pop(req.rid, None)

    def _final_event(self, req: Request) -> Event:
        try:
            self.outputs.finalize_text(req)
        except Exception as exc:  # the request has ended; its text could not be completed
            logger.exception("request %s: its text could not be decoded", req.rid)
            req.finish_reason = internal_error(exc)
        output = GenerateOutput.of(req)
        return self._chunk(req, len(req.text), output) if req.stream else output

    @staticmethod
    def _chunk(req: Request, text_end: int, output: GenerateOutput | None) -> StreamChunk:
        # A streaming consumer never sees text that might still turn out to be a stop string.
        text = req.text[req.streamed_chars : text_end]
        first, end = req.streamed_ids, len(req.output_ids)
        req.streamed_chars, req.streamed_ids = text_end, end
        reason = output.finish_reason if output is not None else None
        lp = req.logprob
        if not lp.enabled:
            return StreamChunk(
                req.rid, text, req.output_ids[first:end], reason, output, req.cached_tokens
            )
        top = lp.top_k > 0
        # The first chunk comes once a token is sampled (or the request ended), when the
        # prompt's logprobs are all computed.
        prompt_part = not req.streamed_prompt_logprobs
        req.streamed_prompt_logprobs = True
        return StreamChunk(
            req.rid,
            text,
            req.output_ids[first:end],
            reason,
            output,
            req.cached_tokens,
            req.output_logprobs[first:end],
            req.output_top_logprobs[first:end] if top else None,
            list(req.input_logprobs) if prompt_part else None,
            list(req.input_top_logprobs) if prompt_part and top else None,
        )


ABORTED = FinishReason("abort", message="aborted")


def raise_if_error(event: Event | BaseException) -> Event:
    """What a consumer does with each event: outputs pass, the exception that ended the
    engine (EngineDeadError) is raised."""
    if isinstance(event, BaseException):
        raise event
    return event


def _deliver(req: Request, event: Event | BaseException) -> bool:
    """Hand an event to the request's consumer; False if the consumer is gone (a closed event
    loop...), which must not stop the engine."""
    try:
        req.on_event(event)
        return True
    except Exception:
        logger.warning("dropping an event for request %s: its consumer is gone", req.rid)
        return False


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
