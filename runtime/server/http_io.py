"""HTTP plumbing shared by every route: JSON bodies, JSON and SSE responses, errors, and
noticing that a client has gone away."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

T = TypeVar("T")
logger = logging.getLogger("loomlm.server")


class HTTPError(Exception):
    """An error the client caused (or a refusal), sent as `{"error": {"message": ...}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        err_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.err_type, "code": self.status}}


class ClientGone(Exception):
    """The client closed its connection before the response was ready."""


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(data), status_code=status, media_type="application/json", headers=headers)


def error_response(error: HTTPError) -> Response:
    return json_response(error.body(), error.status, error.headers)


def dumps(data: Any) -> bytes:
    # orjson writes NaN / inf as null, where the json module would write invalid JSON.
    return orjson.dumps(data)


async def read_json(request: Request, limit: int, timeout: float | None = None) -> dict[str, Any]:
    """The request body as a JSON object; 413 past `limit` bytes, 408 when it has not all
    arrived within `timeout` seconds (a client trickling a body ties up a connection and
    its buffers), 400 if it is not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"body: {declared} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []

    async def receive() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"body: over the limit of {limit} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(receive(), timeout)
    except asyncio.TimeoutError:
        raise HTTPError(
            408, f"body: not received within {timeout:g} s", headers={"connection": "close"}
        ) from None
    raw = b"".join(chunks)
    if not raw.strip():
        raise HTTPError(400, "body: empty; expected a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HTTPError(400, f"body: malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HTTPError(400, f"body: expected a JSON object, got {type(data).__name__}")
    return data


async def wait_for_disconnect(receive: Receive) -> None:
    """Returns when the client disconnects. Call only once the body has been read: from
    then on the server's next message for this request is the disconnect."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client leaves (the caller then aborts)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        raise ClientGone()
    return task.result()


class EventStream:
    """A `text/event-stream` response of `data: <json>` events ending with `data: [DONE]`,
    or (`typed`: the Responses API's way) of `event: <its type>` + `data: <json>` events
    without the `[DONE]`.

    The events come from an async generator. If the client disconnects, the generator is
    cancelled at once (its `finally` aborts the engine requests), not at the next write.
    """

    media_headers = [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
    ]

    def __init__(
        self, events: AsyncIterator[Any], on_close: Callable[[], None], typed: bool = False
    ) -> None:
        self.events = events
        self.on_close = on_close  # runs even if the events never started (aborts them)
        self.typed = typed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            start = {"type": "http.response.start", "status": 200, "headers": self.media_headers}
            await send(start)
            pump = asyncio.ensure_future(self._pump(send))
            watcher = asyncio.ensure_future(wait_for_disconnect(receive))
            try:
                await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (pump, watcher):
                    task.cancel()
                await asyncio.gather(pump, watcher, return_exceptions=True)
        finally:
            try:
                aclose = getattr(self.events, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                self.on_close()

    async def _pump(self, send: Send) -> None:
        try:
            async for event in self.events:
                body = sse(event, self.typed)
                await send({"type": "http.response.body", "body": body, "more_body": True})
        except HTTPError as exc:  # the headers are gone: the error becomes the last event
            body = sse(exc.body(), self.typed)
            await send({"type": "http.response.body", "body": body, "more_body": True})
        except Exception as exc:
            logger.exception("a stream failed")
            error = HTTPError(500, f"internal error: {type(exc).__name__}: {exc}")
            body = sse(error.body(), self.typed)
            await send({"type": "http.response.body", "body": body, "more_body": True})
        end = b"" if self.typed else b"data: [DONE]\n\n"
        await send({"type": "http.response.body", "body": end, "more_body": False})


def sse(event: Any, typed: bool = False) -> bytes:
    """One server-sent event; `typed`: with an `event:` line naming its type (an error's
    is "error")."""
    data = b"data: " + dumps(event) + b"\n\n"
    if not typed:
        return data
    kind = event.get("type") if isinstance(event, dict) else None
    return f"event: {kind if isinstance(kind, str) else 'error'}\n".encode() + data
