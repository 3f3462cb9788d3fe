"""The ASGI application: SGLang-native and OpenAI routes over one engine, /metrics, and
the API-key gate."""

from __future__ import annotations

import hmac
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..engine.engine import Engine
from .args import ServerArgs
from .context import ServerContext, handler
from .http_io import HTTPError, dumps, error_response
from .native_api import NativeAPI
from .openai_api import OpenAIAPI
from .weights_api import WeightsAPI

# Load balancers and orchestrators probe these without credentials.
OPEN_PATHS = frozenset({"/health", "/health_generate"})


def create_app(engine: Engine, args: ServerArgs | None = None) -> Starlette:
    """An app serving `engine`; the caller owns the engine (and shuts it down)."""
    ctx = ServerContext(engine, args or ServerArgs())

    async def metrics(request: Request) -> Response:
        text = await ctx.client.call(ctx.metrics.render)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        what = "no such endpoint" if status == 404 else f"{request.method} is not allowed here"
        return error_response(HTTPError(status, f"{request.url.path}: {what}"))

    routes = [
        *NativeAPI(ctx).routes(),
        *OpenAIAPI(ctx).routes(),
        *WeightsAPI(ctx).routes(),
        Route("/metrics", handler(metrics), methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    app.state.ctx = ctx
    if ctx.args.api_key:
        app.add_middleware(ApiKeyGate, key=ctx.args.api_key)
    return app


class ApiKeyGate:
    """401 for any request without `Authorization: Bearer <key>`, but the health checks.
    A plain ASGI middleware: it must not buffer streams or hide client disconnects."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = [value for name, value in scope["headers"] if name == b"authorization"]
            if len(given) > 1:  # which one counts would depend on the proxy: refuse both
                error = HTTPError(400, "authorization: the header was sent more than once")
                await _send_json(send, 400, error.body())
                return
            if not hmac.compare_digest(given[0] if given else b"", self.expected):
                await _send_json(
                    send,
                    401,
                    HTTPError(
                        401,
                        "authorization: missing or wrong API key (expected `Authorization: Bearer <key>`)",
                        "authentication_error",
                    ).body(),
                )
                return
        await self.app(scope, receive, send)


async def _send_json(send: Send, status: int, data: Any) -> None:
    body = dumps(data)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
