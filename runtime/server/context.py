"""What every route needs: the engine (behind its async client), the server's settings,
the metrics, and one error policy for all handlers."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..engine.engine import Engine
from ..engine.inputs import RequestSpec
from .args import ServerArgs
from .chat_template import load_template
from .context_fit import fit_context
from .engine_client import EngineClient
from .http_io import ClientGone, HTTPError, error_response, read_json
from .metrics import Metrics
from .token_text import Vocabulary

logger = logging.getLogger("loomlm.server")

Handler = Callable[[Request], Awaitable[Any]]


@dataclass
class ServerContext:
    engine: Engine
    args: ServerArgs
    client: EngineClient = field(init=False)
    metrics: Metrics = field(init=False)
    # --chat-template's text (read once, from a file or as given); None: the tokenizer's own
    chat_template: str | None = field(init=False)
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.engine)
        self.client = EngineClient(self.engine, self.metrics.finished)
        self.chat_template = load_template(self.args.chat_template)

    @property
    def model_names(self) -> list[str]:
        """The names OpenAI requests may give the model (--served-model-name), first first."""
        given = [n.strip() for n in (self.args.served_model_name or "").split(",") if n.strip()]
        return given or [str(self.engine.config.model or self.engine.model_dir.name)]

    @property
    def model_name(self) -> str:
        return self.model_names[0]

    def check_model(self, body: dict[str, Any]) -> str:
        """The served name a request asks for (the first when it names none); 404 naming the
        served names for any other, as OpenAI and vLLM answer."""
        model = body.get("model")
        if model is None:
            return self.model_name
        if not isinstance(model, str):
            raise HTTPError(400, f"model: expected a string, got {type(model).__name__}")
        if model not in self.model_names:
            raise HTTPError(
                404,
                f"model: {model!r} is not served here; served: {', '.join(self.model_names)}",
                err_type="NotFoundError",
            )
        return model

    @functools.cached_property
    def vocabulary(self) -> Vocabulary:
        """Every token's bytes, for logprob token names (built on first use)."""
        return Vocabulary(self.engine.tokenizer, self.engine.model_config.vocab_size)

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    async def read_json(self, request: Request) -> dict[str, Any]:
        """The body as a JSON object, within the size and time limits."""
        return await read_json(request, self.args.max_body_bytes, self.args.body_timeout)

    def fit_context(
        self, specs: list[RequestSpec], asked: list[bool], field_name: str
    ) -> list[RequestSpec]:
        """Specs whose prompt and new tokens fit the context: 400 or clamped (context_fit)."""
        return fit_context(
            specs, self.engine.max_context, asked, field_name, self.args.allow_auto_truncate
        )

    def need_tokenizer(self, field_name: str) -> Any:
        if self.engine.tokenizer is None:
            raise HTTPError(
                400, f"{field_name}: this server runs without a tokenizer; send token ids"
            )
        return self.engine.tokenizer


def handler(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Turns what a route raises into a response: HTTPError as itself, a client that left
    as nothing (499, which it never reads), anything else as 500 (logged)."""

    @functools.wraps(fn)
    async def wrapped(request: Request) -> Response:
        try:
            return await fn(request)
        except HTTPError as exc:
            return error_response(exc)
        except ClientGone:
            return Response(status_code=499)
        except RecursionError:  # a guard missed some nesting: still the input's fault
            return error_response(HTTPError(400, "request: nested too deeply"))
        except Exception as exc:
            logger.exception("%s %s failed", request.method, request.url.path)
            return error_response(HTTPError(500, f"internal error: {type(exc).__name__}: {exc}"))

    return wrapped
