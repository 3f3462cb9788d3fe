"""Clients for the serving benchmark: the same requests sent over HTTP (SGLang's native
/generate or OpenAI /v1/completions, streamed) or straight to an in-process Engine, with
a bounded number in flight, each timed token by token."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple


class BenchRequest(NamedTuple):
    prompt_ids: list[int]
    output_len: int


class RequestTiming(NamedTuple):
    ok: bool
    output_tokens: int
    ttft: float  # seconds to the first token
    itls: list[float]  # gaps between successive token arrivals
    e2e: float
    error: str = ""


Send = Callable[[BenchRequest], Awaitable[RequestTiming]]


async def run_all(
    requests: list[BenchRequest], concurrency: int, send: Send
) -> tuple[list[RequestTiming], float]:
    """Send every request with at most `concurrency` in flight; (timings, wall seconds)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(req: BenchRequest) -> RequestTiming:
        async with gate:
            return await send(req)

    start = time.perf_counter()
    timings = await asyncio.gather(*(one(r) for r in requests))
    return list(timings), time.perf_counter() - start


class _Clock:
    """Token arrival times for one request."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.last = self.start
        self.ttft = 0.0
        self.itls: list[float] = []
        self.tokens = 0

    def tokens_arrived(self, count: int) -> None:
        if count <= 0:
            return
        now = time.perf_counter()
        if self.tokens == 0:
            self.ttft = now - self.start
        else:
            self.itls.append(now - self.last)
        self.last = now
        self.tokens += count

    def done(self, ok: bool = True, error: str = "") -> RequestTiming:
        return RequestTiming(
            ok, self.tokens, self.ttft, self.itls, time.perf_counter() - self.start, error
        )


def http_sender(session: Any, base_url: str, backend: str, model: str) -> Send:
    """A sender over aiohttp: backend "native" (/generate with input_ids) or "openai"
    (/v1/completions with a token-id prompt); both stream, with EOS ignored."""

    async def send(req: BenchRequest) -> RequestTiming:
        if backend == "native":
            url = f"{base_url}/generate"
            body: dict[str, Any] = {
                "input_ids": req.prompt_ids,
                "sampling_params": {
                    "max_new_tokens": req.output_len,
                    "temperature": 0,
                    "ignore_eos": True,
                },
                "stream": True,
            }
        else:
            url = f"{base_url}/v1/completions"
            body = {
                "model": model,
                "prompt": req.prompt_ids,
                "max_tokens": req.output_len,
                "temperature": 0,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        clock = _Clock()
        seen = 0
        try:
            async with session.post(url, json=body) as resp:
                if resp.status != 200:
                    return clock.done(False, f"HTTP {resp.status}: {await resp.text()}")
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:") or line == b"data: [DONE]":
                        continue
                    event = json.loads(line[5:])
                    if backend == "native":
                        total = event["meta_info"]["completion_tokens"]
                    elif event.get("usage"):
                        total = event["usage"]["completion_tokens"]
                    else:  # a completion chunk: one step's tokens, whatever its text
                        total = seen + 1 if event["choices"] else seen
                    clock.tokens_arrived(total - seen)
                    seen = max(seen, total)
        except Exception as exc:  # a benchmark reports failures instead of stopping
            return clock.done(False, f"{type(exc).__name__}: {exc}")
        clock.tokens = seen
        return clock.done()

    return send


def engine_sender(engine: Any) -> Send:
    """A sender that streams from an in-process Engine: the same work without HTTP."""

    async def send(req: BenchRequest) -> RequestTiming:
        clock = _Clock()
        params = {"max_new_tokens": req.output_len, "temperature": 0, "ignore_eos": True}
        async for chunk in engine.async_stream(None, params, input_ids=req.prompt_ids):
            clock.tokens_arrived(len(chunk.token_ids))
        return clock.done()

    return send
