"""POST /v1/chat/completions: messages rendered by the chat template (with the tools, when
there are some), generated, and answered as content or tool calls (chat_reply), whole or
streamed."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, NamedTuple

from starlette.requests import Request
from starlette.responses import Response

from ..engine.inputs import RequestSpec
from ..engine.outputs import StreamChunk
from .chat_reply import ChatReply
from .chat_template import (
    chat_continuation,
    chat_prompt_ids,
    check_messages,
    check_template_kwargs,
)
from .context import ServerContext
from .engine_client import INLINE_TEXT_CHARS, RequestGroup, off_loop
from .http_io import HTTPError, json_response
from .openai_common import finish_reason, generate_request, max_top, stream_choices, usage
from .openai_logprobs import chat_logprobs
from .openai_request import OpenAIRequest, bool_field, parse_chat
from .tool_calls import ToolRequest, history_for_template, parse_tools
from .tool_parsers import format_for


class ChatRequest(NamedTuple):
    """A chat request made ready for the engine: its parsed fields, its tools, its specs."""

    req: OpenAIRequest
    tools: ToolRequest | None
    specs: list[RequestSpec]
    reasoning: str | None  # the reasoning parser, when the reasoning is separated
    stream_reasoning: bool

    def reply(self, fmt: str) -> ChatReply:
        return ChatReply(self.tools, fmt, self.reasoning, self.stream_reasoning)


class ChatAPI:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def tool_format(self) -> str:
        tok = self.ctx.engine.tokenizer
        template = self.ctx.chat_template or getattr(tok, "chat_template", None)
        return format_for(
            self.ctx.args.tool_call_parser, template if isinstance(template, str) else None
        )

    async def prepare(self, body: dict[str, Any]) -> ChatRequest:
        """Check the body, render the messages (and tools) and build the engine's specs."""
        engine = self.ctx.engine
        req = parse_chat(body, engine.max_context, max_top(engine), self.ctx.args.strict_fields)
        tools = parse_tools(body)
        if tools is not None and tools.constrained:
            if any(k in req.sampling_params for k in ("json_schema", "regex", "ebnf", "choices")):
                raise HTTPError(
                    400,
                    "tool_choice: a forced tool call cannot be combined with another constraint",
                )
            req.sampling_params["json_schema"] = tools.json_schema()
        messages = check_messages(
            body.get("messages"), engine.max_context, engine.limits.max_prompt_chars
        )
        messages = history_for_template(messages)
        tok = self.ctx.need_tokenizer("messages")
        add_generation, continue_final = chat_continuation(body, messages)
        template_kwargs = check_template_kwargs(tok, body.get("chat_template_kwargs"))
        if tools is not None:
            template_kwargs = {**template_kwargs, "tools": tools.tools}
        size = sum(len(m["content"]) for m in messages)
        size += len(json.dumps(tools.tools)) if tools is not None else 0
        ids = await off_loop(
            partial(
                chat_prompt_ids,
                tok,
                self.ctx.chat_template,
                messages,
                add_generation,
                template_kwargs,
                continue_final,
            ),
            len(messages) > 256 or size > INLINE_TEXT_CHARS,
        )
        specs, _ = await self.ctx.client.prepare(
            generate_request(req, prompt_scores=False, input_ids=ids)
        )
        field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        specs = self.ctx.fit_context(specs, [body.get(field) is not None], field)
        # SGLang's reasoning switches, on unless set false
        separate = bool_field(body, "separate_reasoning", True)
        parser = self.ctx.args.reasoning_parser if separate else None
        streamed = bool_field(body, "stream_reasoning", True)
        return ChatRequest(req, tools, specs, parser, streamed)

    async def chat(self, request: Request) -> Response:
        body = await self.ctx.read_json(request)
        name = self.ctx.check_model(body)
        chat = await self.prepare(body)
        req, specs = chat.req, chat.specs
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "created": created, "model": name}
        fmt = self.tool_format()
        if req.stream:
            events = partial(self._stream, head=head, chat=chat, fmt=fmt)
            return self.ctx.client.stream(specs, events)  # type: ignore[return-value]
        outputs = await self.ctx.client.outputs(request, specs)
        choices = []
        for i, out in enumerate(outputs):
            logprobs = None
            if req.top_logprobs is not None:
                tops = out.output_top_logprobs if req.top_logprobs else None
                reader = self.ctx.vocabulary.reader(at_start=False)
                logprobs = chat_logprobs(reader, out.output_token_logprobs or [], tops)
            reply = chat.reply(fmt)
            choices.append(
                {
                    "index": i,
                    "message": reply.whole(out.text),
                    "logprobs": logprobs,
                    "finish_reason": reply.finish_reason(finish_reason(out)),
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

    def _stream(
        self, group: RequestGroup, head: dict[str, Any], chat: ChatRequest, fmt: str
    ) -> AsyncIterator[Any]:
        req, specs = chat.req, chat.specs
        delta = {"role": "assistant", "content": ""}
        openings = [
            {"index": i, "delta": delta, "logprobs": None, "finish_reason": None}
            for i in range(len(specs))
        ]
        readers = [self.ctx.vocabulary.reader(at_start=False) for _ in specs]
        replies = [chat.reply(fmt) for _ in specs]

        def fields(i: int, chunk: StreamChunk, final: bool) -> dict[str, Any] | None:
            logprobs = None
            if req.top_logprobs is not None:
                tops = chunk.output_top_logprobs if req.top_logprobs else None
                logprobs = chat_logprobs(readers[i], chunk.output_logprobs or [], tops)
            content = replies[i].delta(chunk.text, final)
            if not (final or content or logprobs is not None):
                return None
            out: dict[str, Any] = {"delta": content, "logprobs": logprobs}
            if chunk.output is not None:
                out["finish_reason"] = replies[i].finish_reason(finish_reason(chunk.output))
            return out

        head = {**head, "object": "chat.completion.chunk"}
        return stream_choices(group, head, req, specs, openings, fields)
