"""The OpenAI API: /v1/models, /v1/completions, and the routes of /v1/chat/completions
(openai_chat) and /v1/responses (responses_api), with streaming (server-sent events ending in `[DONE]`), n, stop, logprobs and
usage."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..engine.inputs import RequestSpec
from ..engine.outputs import StreamChunk
from .context import ServerContext, handler
from .engine_client import RequestGroup
from .http_io import json_response
from .openai_chat import ChatAPI
from .openai_common import finish_reason, generate_request, max_top, stream_choices, usage
from .openai_logprobs import completion_logprobs
from .openai_request import OpenAIRequest, parse_completion
from .responses_api import ResponsesAPI


class OpenAIAPI:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.chat = ChatAPI(ctx)

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", handler(self.models), methods=["GET"]),
            Route("/v1/models/{model_id:path}", handler(self.model), methods=["GET"]),
            Route("/v1/completions", handler(self.completions), methods=["POST"]),
            Route("/v1/chat/completions", handler(self.chat.chat), methods=["POST"]),
            *ResponsesAPI(self.ctx, self.chat).routes(),
        ]

    async def models(self, request: Request) -> Response:
        data = [self._model_entry(name) for name in self.ctx.model_names]
        return json_response({"object": "list", "data": data})

    async def model(self, request: Request) -> Response:
        """`client.models.retrieve(id)`: a served name, or 404 naming them."""
        name = self.ctx.check_model({"model": request.path_params["model_id"]})
        return json_response(self._model_entry(name))

    def _model_entry(self, name: str) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": int(self.ctx.started),
            "owned_by": "loomlm",
            "root": str(self.ctx.engine.config.model or self.ctx.engine.model_dir),
            "max_model_len": self.ctx.engine.max_context,
        }

    # -- /v1/completions -----------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        body = await self.ctx.read_json(request)
        name = self.ctx.check_model(body)
        req, echo = parse_completion(body, max_top(self.ctx.engine), self.ctx.args.strict_fields)
        specs, _ = await self.ctx.client.prepare(
            generate_request(req, prompt_scores=echo, text=body["prompt"])
        )
        specs = self.ctx.fit_context(specs, [body.get("max_tokens") is not None], "max_tokens")
        prompts = self._prompt_texts(body["prompt"], specs) if echo else None
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": name,
        }
        if req.stream:
            events = partial(
                self._stream_completion, head=head, req=req, specs=specs, prompts=prompts
            )
            return self.ctx.client.stream(specs, events)  # type: ignore[return-value]
        outputs = await self.ctx.client.outputs(request, specs)
        choices = []
        for i, out in enumerate(outputs):
            prefix = prompts[i] if prompts else ""
            logprobs = None
            if req.top_logprobs is not None:
                entries = (out.input_token_logprobs or []) if echo else []
                tops = None
                if req.top_logprobs:
                    tops = ((out.input_top_logprobs or []) if echo else []) + (
                        out.output_top_logprobs or []
                    )
                reader = self.ctx.vocabulary.reader(at_start=echo)
                entries = entries + (out.output_token_logprobs or [])
                logprobs = completion_logprobs(reader, entries, tops)
            choices.append(
                {
                    "index": i,
                    "text": prefix + out.text,
                    "logprobs": logprobs,
                    "finish_reason": finish_reason(out),
                }
            )
        return json_response({**head, "choices": choices, "usage": usage(specs, outputs)})

    def _stream_completion(
        self,
        group: RequestGroup,
        head: dict[str, Any],
        req: OpenAIRequest,
        specs: list[RequestSpec],
        prompts: list[str] | None,
    ) -> AsyncIterator[Any]:
        # With logprobs, an echoed prompt goes out with its logprobs in the first chunk
        # (so that offsets and tokens line up); without, it opens the stream.
        held: list[str | None] = list(prompts or [])
        openings = []
        if req.top_logprobs is None:
            openings = [
                {"index": i, "text": p, "logprobs": None, "finish_reason": None}
                for i, p in enumerate(held)
            ]
            held = []
        readers = [self.ctx.vocabulary.reader(at_start=bool(prompts)) for _ in specs]

        def fields(i: int, chunk: StreamChunk, final: bool) -> dict[str, Any] | None:
            text, logprobs = chunk.text, None
            prompt = held[i] if held else None
            if prompt is not None:
                text, held[i] = prompt + text, None
            if req.top_logprobs is not None:
                entries = (chunk.input_logprobs or []) if prompts else []
                entries = entries + (chunk.output_logprobs or [])
                tops = None
                if req.top_logprobs:
                    tops = ((chunk.input_top_logprobs or []) if prompts else []) + (
                        chunk.output_top_logprobs or []
                    )
                logprobs = completion_logprobs(readers[i], entries, tops)
            if not (final or text or logprobs is not None):
                return None
            return {"text": text, "logprobs": logprobs}

        return stream_choices(group, head, req, specs, openings, fields)

    def _prompt_texts(self, prompt: Any, specs: list[RequestSpec]) -> list[str]:
        """Each choice's prompt as text (echo): the caller's string, or its ids decoded."""
        tok = self.ctx.need_tokenizer("echo")
        texts: list[str] = []
        given = [prompt] if isinstance(prompt, str) else prompt
        k = -1
        for spec in specs:
            k += spec.sample_index == 0
            p = given[k] if isinstance(given, list) and k < len(given) else None
            texts.append(p if isinstance(p, str) else tok.decode(spec.prompt_ids))
        return texts
