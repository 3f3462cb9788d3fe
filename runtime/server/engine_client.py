"""The server's asynchronous view of an Engine: preparing requests off the event loop,
receiving their events in order, and aborting whatever a caller stops waiting for."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

from starlette.requests import Request

from ..engine.engine import Engine
from ..engine.errors import EngineDeadError, EngineOverloadedError
from ..engine.inputs import RequestSpec
from ..engine.outputs import Event, GenerateOutput
from ..sampling.generate_request import GenerateRequest
from ..utils.threads import threadsafe_put
from .http_io import EventStream, HTTPError, unless_disconnected

logger = logging.getLogger("loomlm.server")

# What an overloaded server tells clients to wait before retrying (OpenAI's and most HTTP
# clients honour Retry-After on 503).
RETRY_AFTER_SECONDS = 1


def is_final(event: Event) -> bool:
    return isinstance(event, GenerateOutput) or event.finish_reason is not None


def final_output(event: Event) -> GenerateOutput:
    out = event if isinstance(event, GenerateOutput) else event.output
    assert out is not None
    return out


def raise_if_failed(out: GenerateOutput) -> None:
    """A request that ended on an error (its fault: 400; an internal fault: 500) fails its
    HTTP call with that status; aborts a client or shutdown asked for are results."""
    reason = out.finish_reason
    if reason.type == "abort" and reason.status_code is not None:
        raise HTTPError(reason.status_code, reason.message or "request failed")


def engine_unavailable(exc: EngineDeadError) -> HTTPError:
    return HTTPError(503, f"the engine has stopped: {exc}")


def refusal(exc: Exception) -> HTTPError:
    """Why the engine queued none of a call: overloaded (503, retry later), dead (503), or
    an id in flight through another door, the Python API (400)."""
    if isinstance(exc, EngineOverloadedError):
        return HTTPError(503, str(exc), headers={"retry-after": str(RETRY_AFTER_SECONDS)})
    if isinstance(exc, EngineDeadError):
        return engine_unavailable(exc)
    return HTTPError(400, str(exc))


class RequestGroup:
    """The requests of one HTTP call, submitted together. Iterate for (index, event) until
    all have finished; `close()` (always called, idempotent) aborts any that have not.

    Routes open their group as soon as the request is parsed, before anything awaits: the
    requests of a burst then reach the engine together instead of interleaved with the
    event loop's work on the others (64 of them arrived as one, then an 18 ms gap, then the
    rest; now within ~15 ms, no gap over 2 ms).
    """

    def __init__(self, client: EngineClient, specs: list[RequestSpec], stream: bool) -> None:
        self.client = client
        self.index = {spec.rid: i for i, spec in enumerate(specs)}
        self.pending = set(self.index)
        self.client_rids: set[str] = set()  # ids the client gave for n > 1 (see EngineClient)
        self.inbox: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        try:
            client.engine.submit(specs, stream, threadsafe_put(self.inbox))
        except (EngineOverloadedError, EngineDeadError, ValueError) as exc:
            self.pending.clear()  # nothing of the call was queued
            raise refusal(exc) from None

    async def __aiter__(self) -> AsyncIterator[tuple[int, Event]]:
        while self.pending:
            event = await self.inbox.get()
            if isinstance(event, EngineDeadError):
                raise engine_unavailable(event)
            assert not isinstance(event, BaseException)
            if is_final(event):
                self.pending.discard(event.rid)
                self.client.inflight.discard(event.rid)
                out = final_output(event)
                _log_finished(out)
                self.client.on_finished(out)
                raise_if_failed(out)  # the whole call fails with it (the rest is aborted)
            yield self.index[event.rid], event

    async def results(self) -> list[GenerateOutput]:
        """Every request's output, in order, once all have finished."""
        outputs: list[GenerateOutput | None] = [None] * len(self.index)
        async for i, event in self:
            outputs[i] = final_output(event)
        return outputs  # type: ignore[return-value]

    def close(self) -> None:
        for rid in self.pending:
            self.client.engine.abort(rid)
        self.client.inflight.difference_update(self.index)
        for rid in self.client_rids:
            self.client.by_client_rid.pop(rid, None)
        self.client_rids.clear()
        self.pending.clear()


class EngineClient:
    def __init__(
        self, engine: Engine, on_finished: Callable[[GenerateOutput], None] = lambda out: None
    ) -> None:
        self.engine = engine
        self.on_finished = on_finished
        self.inflight: set[str] = set()  # engine request ids
        # The engine ids of a client's id: itself, or "<rid>-<k>" for its n samples.
        self.by_client_rid: dict[str, list[str]] = {}

    async def prepare(self, request: GenerateRequest) -> tuple[list[RequestSpec], bool]:
        """Engine.prepare; a ValueError becomes HTTP 400. Compiling a grammar or tokenizing
        a long text runs in a worker thread, so as not to hold up the event loop; anything
        else runs inline: a thread hop costs more than the work, and each hop is a point
        where a burst of requests gets interleaved with the loop's other work."""
        work = partial(self.engine.prepare, request)
        try:
            if not _is_heavy(request):
                return work()
            return await asyncio.get_running_loop().run_in_executor(None, work)
        except (ValueError, TypeError) as exc:
            raise HTTPError(400, str(exc)) from None
        except RecursionError:  # a guard missed some nesting: still the input's fault
            raise HTTPError(400, "request: nested too deeply") from None

    def check_rids(self, specs: list[RequestSpec]) -> None:
        """400 if a request id is already in flight."""
        taken = sorted(spec.rid for spec in specs if spec.rid in self.inflight)
        if taken:
            raise HTTPError(400, f"rid: {', '.join(taken)} already in flight")

    def open(self, specs: list[RequestSpec], stream: bool) -> RequestGroup:
        """Submit `specs`. A request id already in flight is refused (400); past the
        engine's queue limit, the call is (503 with Retry-After)."""
        self.check_rids(specs)
        group = RequestGroup(self, specs, stream)
        self.inflight.update(spec.rid for spec in specs)
        for spec in specs:
            if spec.params.n > 1:
                client_rid = spec.rid.rsplit("-", 1)[0]
                self.by_client_rid.setdefault(client_rid, []).append(spec.rid)
                group.client_rids.add(client_rid)
        return group

    def stream(
        self,
        specs: list[RequestSpec],
        events: Callable[[RequestGroup], AsyncIterator[Any]],
        typed: bool = False,
    ) -> EventStream:
        """Submit `specs` now and answer with the events `events(group)` makes of theirs
        (`typed`: as the Responses API sends them, see EventStream)."""
        group = self.open(specs, stream=True)
        return EventStream(events(group), group.close, typed)

    async def outputs(self, request: Request, specs: list[RequestSpec]) -> list[GenerateOutput]:
        """Submit `specs` now and await their outputs; a client that leaves aborts them."""
        group = self.open(specs, stream=False)
        try:
            return await unless_disconnected(request, group.results())
        finally:
            group.close()

    async def generate(self, specs: list[RequestSpec]) -> list[GenerateOutput]:
        """Run `specs` to the end; cancelling the caller aborts them."""
        group = self.open(specs, stream=False)
        try:
            return await group.results()
        finally:
            group.close()

    def abort(self, rid: str) -> bool:
        """Abort a request by the id its client gave (with all `n` samples of it). False
        when no such request is in flight."""
        rids = [r for r in self.by_client_rid.get(rid, ()) if r in self.inflight]
        if rid in self.inflight:
            rids.append(rid)
        for r in rids:
            self.engine.abort(r)
        return bool(rids)

    def abort_all(self) -> None:
        self.engine.abort_all()

    async def call(self, fn: Any, *args: Any) -> Any:
        """Run a blocking engine call (stats, flush) in a worker thread."""
        try:
            return await asyncio.get_running_loop().run_in_executor(None, partial(fn, *args))
        except EngineDeadError as exc:
            raise engine_unavailable(exc) from None


_CONSTRAINT_KEYS = ("regex", "json_schema", "ebnf", "choices")
# Work below these sizes is done inline: a thread hop costs more than tokenizing 20,000
# characters or checking 20,000 ids (well under a millisecond).
INLINE_TEXT_CHARS = 20_000
INLINE_IDS = 20_000


async def off_loop(fn: Any, heavy: bool) -> Any:
    """Run `fn()` inline when light, else in a worker thread: the event loop must keep
    serving everyone else while a large input is tokenized, rendered or decoded."""
    if not heavy:
        return fn()
    return await asyncio.get_running_loop().run_in_executor(None, fn)


def _is_heavy(request: GenerateRequest) -> bool:
    params = request.sampling_params
    dicts = params if isinstance(params, list) else [params]
    if len(dicts) > 64 or any(
        isinstance(d, dict) and any(d.get(k) is not None for k in _CONSTRAINT_KEYS) for d in dicts
    ):
        return True
    prompt = request.text
    texts = [prompt] if isinstance(prompt, str) else prompt if isinstance(prompt, list) else []
    if sum(len(t) if isinstance(t, (str, list)) else 1 for t in texts) > INLINE_TEXT_CHARS:
        return True
    ids = request.input_ids
    if isinstance(ids, list):
        return sum(len(x) if isinstance(x, list) else 1 for x in ids) > INLINE_IDS
    return False


def _log_finished(out: GenerateOutput) -> None:
    if logger.isEnabledFor(logging.INFO):
        logger.info(
            "request %s: %d prompt (%d cached) + %d completion tokens, %.3f s, %s",
            out.rid,
            out.prompt_tokens,
            out.cached_tokens,
            out.completion_tokens,
            out.e2e_latency,
            out.finish_reason.type,
        )
