"""The OpenAI API: /v1/models, /v1/completions and /v1/chat/completions, with streaming
(server-sent events ending in `[DONE]`), n, stop, logprobs and usage."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..engine.inputs import RequestSpec
from ..engine.outputs import GenerateOutput, StreamChunk
from ..sampling.generate_request import GenerateRequest
from .chat_template import chat_prompt_ids, check_messages, check_template_kwargs
from .context import ServerContext, handler
from .engine_client import INLINE_TEXT_CHARS, RequestGroup, off_loop
from .http_io import HTTPError, json_response
from .openai_logprobs import chat_logprobs, completion_logprobs
from .openai_request import OpenAIRequest, parse_chat, parse_completion


def finish_reason(out: GenerateOutput) -> str:
    return out.finish_reason.type  # "stop" | "length" | "abort", as SGLang reports them


def usage(specs: list[RequestSpec], outputs: list[GenerateOutput]) -> dict[str, Any]:
    """Each prompt counts once, however many samples it had (as OpenAI counts n > 1)."""
    prompt = sum(len(s.prompt_ids) for s in specs if s.sample_index == 0)
    completion = sum(o.completion_tokens for o in outputs)
    cached = sum(o.cached_tokens for s, o in zip(specs, outputs) if s.sample_index == 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


class OpenAIAPI:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", handler(self.models), methods=["GET"]),
            Route("/v1/models/{model_id:path}", handler(self.model), methods=["GET"]),
            Route("/v1/completions", handler(self.completions), methods=["POST"]),
            Route("/v1/chat/completions", handler(self.chat), methods=["POST"]),
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
        req, echo = parse_completion(body, self._max_top())
        specs, _ = await self.ctx.client.prepare(
            self._generate_request(req, prompt_scores=echo, text=body["prompt"])
        )
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

        return self._stream_choices(group, head, req, specs, openings, fields)

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

    # -- /v1/chat/completions ------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        body = await self.ctx.read_json(request)
        name = self.ctx.check_model(body)
        req = parse_chat(body, self.ctx.engine.max_context, self._max_top())
        engine = self.ctx.engine
        messages = check_messages(
            body.get("messages"), engine.max_context, engine.limits.max_prompt_chars
        )
        tok = self.ctx.need_tokenizer("messages")
        add_generation = body.get("add_generation_prompt", True)
        if not isinstance(add_generation, bool):
            raise HTTPError(400, "add_generation_prompt: expected true or false")
        template_kwargs = check_template_kwargs(tok, body.get("chat_template_kwargs"))
        heavy = len(messages) > 256 or sum(len(m["content"]) for m in messages) > INLINE_TEXT_CHARS
        ids = await off_loop(
            partial(
                chat_prompt_ids,
                tok,
                self.ctx.chat_template,
                messages,
                add_generation,
                template_kwargs,
            ),
            heavy,
        )
        specs, _ = await self.ctx.client.prepare(
            self._generate_request(req, prompt_scores=False, input_ids=ids)
        )
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "created": created, "model": name}
        if req.stream:
            events = partial(self._stream_chat, head=head, req=req, specs=specs)
            return self.ctx.client.stream(specs, events)  # type: ignore[return-value]
        outputs = await self.ctx.client.outputs(request, specs)
        choices = []
        for i, out in enumerate(outputs):
            logprobs = None
            if req.top_logprobs is not None:
                tops = out.output_top_logprobs if req.top_logprobs else None
                reader = self.ctx.vocabulary.reader(at_start=False)
                logprobs = chat_logprobs(reader, out.output_token_logprobs or [], tops)
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": out.text},
                    "logprobs": logprobs,
                    "finish_reason": finish_reason(out),
                }
            )
        return json_response(
            {
                **head,
                "object": "chat.completion",
                "choices": choices,
                "usage": usage(specs, outputs),
            }
        )

    def _stream_chat(
        self,
        group: RequestGroup,
        head: dict[str, Any],
        req: OpenAIRequest,
        specs: list[RequestSpec],
    ) -> AsyncIterator[Any]:
        delta = {"role": "assistant", "content": ""}
        openings = [
            {"index": i, "delta": delta, "logprobs": None, "finish_reason": None}
            for i in range(len(specs))
        ]

        readers = [self.ctx.vocabulary.reader(at_start=False) for _ in specs]

        def fields(i: int, chunk: StreamChunk, final: bool) -> dict[str, Any] | None:
            logprobs = None
            if req.top_logprobs is not None:
                tops = chunk.output_top_logprobs if req.top_logprobs else None
                logprobs = chat_logprobs(readers[i], chunk.output_logprobs or [], tops)
            if not (final or chunk.text or logprobs is not None):
                return None
            return {"delta": {"content": chunk.text} if chunk.text else {}, "logprobs": logprobs}

        head = {**head, "object": "chat.completion.chunk"}
        return self._stream_choices(group, head, req, specs, openings, fields)

    async def _stream_choices(
        self,
        group: RequestGroup,
        head: dict[str, Any],
        req: OpenAIRequest,
        specs: list[RequestSpec],
        openings: list[dict[str, Any]],
        fields: Callable[[int, StreamChunk, bool], dict[str, Any] | None],
    ) -> AsyncIterator[Any]:
        """What both endpoints stream: the opening choices, then a choice per chunk with
        something to say (`fields` gives its content; None while text is held back), its
        finish reason on the last, and with include_usage a closing usage event."""
        extra = {"usage": None} if req.include_usage else {}
        outputs: list[GenerateOutput | None] = [None] * len(specs)
        try:
            for choice in openings:
                yield {**head, "choices": [choice], **extra}
            async for i, chunk in group:
                assert isinstance(chunk, StreamChunk)
                final = chunk.output is not None
                content = fields(i, chunk, final)
                if content is None:
                    continue
                reason = None
                if chunk.output is not None:
                    outputs[i] = chunk.output
                    reason = finish_reason(chunk.output)
                choice = {"index": i, **content, "finish_reason": reason}
                yield {**head, "choices": [choice], **extra}
            if req.include_usage:
                yield {**head, "choices": [], "usage": usage(specs, outputs)}  # type: ignore[arg-type]
        finally:
            group.close()

    def _max_top(self) -> int:
        engine = self.ctx.engine
        return min(engine.request_limits.max_top_logprobs, engine.model_config.vocab_size)

    @staticmethod
    def _generate_request(
        req: OpenAIRequest,
        prompt_scores: bool,
        text: Any = None,
        input_ids: list[int] | None = None,
    ) -> GenerateRequest:
        """The engine's request for an OpenAI one: a completion's `prompt` (text or ids) or
        a chat's rendered `messages`."""
        logprobs = req.top_logprobs is not None
        return GenerateRequest(
            text=text,
            input_ids=input_ids,
            sampling_params=req.sampling_params,
            return_logprob=logprobs,
            top_logprobs_num=req.top_logprobs,
            logprob_start_len=0 if logprobs and prompt_scores else None,
            rid=req.rid,
            prompt_field="prompt" if input_ids is None else "messages",
        )
