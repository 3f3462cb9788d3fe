"""The engine thread: schedule -> forward -> process, forever, fed through a thread-safe inbox."""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple

from ..executor.model_runner import ItemResult, ModelRunner, ScheduledItem
from ..scheduler.events import next_event
from ..scheduler.output_processor import OutputProcessor
from ..scheduler.request import FinishReason, Request, internal_error
from ..scheduler.scheduler import Scheduler
from ..utils.checks import shown
from ..utils.threads import start_thread
from .errors import EngineDeadError, EngineOverloadedError
from .messages import Abort, AbortAll, AddRequest, Call, CallResult, Message
from .outputs import Event

logger = logging.getLogger("loomlm.engine")


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
        self._inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = False
        # Requests submitted and not yet finished, by id: counted against the queue limit,
        # and found by id in O(1) for aborts. Written under `_lock` by submitters and the
        # engine thread alike.
        self._lock = threading.Lock()
        self._requests: dict[str, Request] = {}
        self.error: BaseException | None = None  # why the engine thread died, if it did
        # pause_generation: no steps run; requests, aborts and calls are still taken in
        self.paused = False
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
                self._inbox.put(AddRequest(req))
        self._wake.set()

    def abort(self, rid: str) -> None:
        self._inbox.put(Abort(rid))
        self._wake.set()

    def abort_all(self, message: str) -> None:
        self._inbox.put(AbortAll(message))
        self._wake.set()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the engine thread between steps and return its result."""
        done: queue.SimpleQueue[CallResult] = queue.SimpleQueue()
        with self._lock:
            self._check_open()
            self._inbox.put(Call(fn, done))
        self._wake.set()
        while True:
            try:
                result = done.get(timeout=0.5)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    self._check_open()
                    raise RuntimeError("the engine thread has stopped") from None
        if not result.ok:
            raise result.value
        return result.value

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
            if self.paused or not self.scheduler.has_work():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            if self.scheduler.num_running == 0 and self.arrival_wait.gap > 0:
                self._await_burst()  # starting from an empty batch
            self._step()

    def pause(self, mode: str) -> int:
        """Stop stepping (the engine thread, through `call`); returns how many requests the
        mode acted on. abort: every request in flight ends as aborted; retract: the running
        ones go back to the queue, their KV released; in_place: they keep their KV and
        resume where they stopped."""
        self.paused = True
        if mode == "abort":
            ended = self.scheduler.abort_all("generation paused (pause_generation)")
            for req in ended:
                self._emit(req)
            return len(ended)
        if mode == "retract":
            return self.scheduler.retract_all()
        return self.scheduler.num_running

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
                message = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(message, Call):
                message.done.put(CallResult(False, dead))

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
        batch = sched.schedule()
        for req in batch.finished:
            self._emit(req)
        items = batch.items
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
                message = self._inbox.get_nowait()
            except queue.Empty:
                self.scheduler.compact_waiting()
                return
            if isinstance(message, AddRequest):
                self.scheduler.add(message.req)
            elif isinstance(message, Abort):
                req = self._requests.get(message.rid)
                if req is not None and self.scheduler.abort(req, ABORTED):
                    self._emit(req)
            elif isinstance(message, AbortAll):
                for req in self.scheduler.abort_all(message.message):
                    self._emit(req)
            else:
                try:
                    message.done.put(CallResult(True, message.fn()))
                except BaseException as exc:  # handed back to the caller
                    message.done.put(CallResult(False, exc))

    def _emit(self, req: Request) -> None:
        """Hand `req`'s consumer what it has to report after this step, if anything."""
        try:
            event = next_event(req, self.outputs)
        except Exception as exc:
            logger.exception("request %s failed", req.rid)
            self.scheduler.abort(req, internal_error(exc))
            return self._emit(req)
        if event is None:
            return
        if req.status.finished:
            with self._lock:
                self._requests.pop(req.rid, None)
        if not _deliver(req, event) and not req.status.finished:
            self.scheduler.abort(req, FinishReason("abort", message="consumer gone"))
            with self._lock:
                self._requests.pop(req.rid, None)


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
