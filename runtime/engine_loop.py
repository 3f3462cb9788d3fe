"""The engine thread: schedule -> forward -> process, forever, fed through a thread-safe inbox."""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import NamedTuple

from .model_runner import ModelRunner
from .output_processor import OutputProcessor
from .outputs import GenerateOutput, StreamChunk
from .request import Request
from .scheduler import Scheduler

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
    def __init__(
        self,
        scheduler: Scheduler,
        runner: ModelRunner,
        outputs: OutputProcessor,
        arrival_wait: ArrivalWait = NO_ARRIVAL_WAIT,
    ) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.outputs = outputs
        self.arrival_wait = arrival_wait
        self._inbox: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = False
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loomlm-engine", daemon=True)
        self._thread.start()

    # -- called from any thread --------------------------------------------------------------
    def submit(self, req: Request) -> None:
        if self._stopping:
            raise RuntimeError("the engine has been shut down")
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

        def wrapped() -> None:
            try:
                done.put((True, fn()))
            except BaseException as exc:  # handed back to the caller
                done.put((False, exc))

        self._inbox.put(("call", wrapped))
        self._wake.set()
        while True:
            try:
                ok, value = done.get(timeout=0.5)
                break
            except queue.Empty:
                if not self._thread.is_alive():
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

    # -- the engine thread ----------------------------------------------------------------
    def _run(self) -> None:
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
            results = self.runner.forward(items)
        except Exception as exc:  # a failed step aborts its requests, not the engine
            logger.error("step failed: %s", traceback.format_exc())
            for req in sched.fail(items, f"internal error: {type(exc).__name__}: {exc}"):
                self._emit(req)
            return
        for req in sched.process(items, results):
            self._emit(req)

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, value = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                self.scheduler.add(value)  # type: ignore[arg-type]
            elif kind == "abort":
                req = self.scheduler.abort(value)  # type: ignore[arg-type]
                if req is not None:
                    self._emit(req)
            elif kind == "abort_all":
                for req in self.scheduler.abort_all(value):  # type: ignore[arg-type]
                    self._emit(req)
            else:
                value()  # type: ignore[operator]

    def _emit(self, req: Request) -> None:
        if req.status.finished:
            self.outputs.finalize_text(req)
            output = GenerateOutput.of(req)
            event = self._chunk(req, len(req.text), output) if req.stream else output
        elif req.stream:
            hold = max((len(s) for s in req.params.stop), default=1) - 1
            text_end = max(req.streamed_chars, len(req.text) - hold)
            if text_end == req.streamed_chars and len(req.output_ids) == req.streamed_ids:
                return  # nothing new (a prefill chunk, or text held back)
            event = self._chunk(req, text_end, None)
        else:
            return
        try:
            req.on_event(event)
        except Exception:  # a consumer that went away (closed event loop...) must not stop us
            logger.warning("dropping an event for request %s: its consumer is gone", req.rid)
            if not req.status.finished:
                self.scheduler.abort(req.rid, "consumer gone")

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
