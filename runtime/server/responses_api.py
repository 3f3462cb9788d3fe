"""POST /v1/responses: OpenAI's Responses API, served through the chat machinery (the body
becomes a chat request, responses_request) and answered as a Response object: output items
(a `message` with `output_text`, `function_call`s), status, usage; streamed as the Responses
event types (`response.created` ... `response.output_text.delta` ... `response.completed`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..engine.outputs import GenerateOutput, StreamChunk
from .context import ServerContext, handler
from .engine_client import RequestGroup
from .http_io import HTTPError, json_response
from .openai_chat import ChatAPI, ChatRequest
from .responses_request import chat_body


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponsesAPI:
    def __init__(self, ctx: ServerContext, chat: ChatAPI) -> None:
        self.ctx, self.chat = ctx, chat

    def routes(self) -> list[Route]:
        return [Route("/v1/responses", handler(self.create), methods=["POST"])]

    async def create(self, request: Request) -> Response:
        body = await self.ctx.read_json(request)
        chat = chat_body(body)
        if chat.get("n", 1) != 1:
            raise HTTPError(400, "n: a response is one answer; ask /v1/chat/completions for n")
        name = self.ctx.check_model(chat)
        prepared = await self.chat.prepare(chat)
        fmt = self.chat.tool_format()
        shell = _shell(body, name)
        if prepared.req.stream:
            events = partial(self._stream, shell=shell, chat=prepared, fmt=fmt)
            return self.ctx.client.stream(prepared.specs, events, typed=True)  # type: ignore[return-value]
        [out] = await self.ctx.client.outputs(request, prepared.specs)
        message = prepared.reply(fmt).whole(out.text)
        items = []
        if message.get("reasoning_content"):
            items.append(_reasoning_item(message["reasoning_content"]))
        if message["content"] is not None and (message["content"] or "tool_calls" not in message):
            items.append(_message_item(_id("msg"), message["content"], "completed"))
        for call in message.get("tool_calls", []):
            items.append(_call_item(call, "completed"))
        return json_response(_finished(shell, items, out))

    async def _stream(
        self, group: RequestGroup, shell: dict[str, Any], chat: ChatRequest, fmt: str
    ) -> AsyncIterator[dict[str, Any]]:
        events = _Events(shell)
        reply = chat.reply(fmt)
        try:
            yield events.make("response.created", response={**shell, "status": "in_progress"})
            yield events.make("response.in_progress", response={**shell, "status": "in_progress"})
            async for _, chunk in group:
                assert isinstance(chunk, StreamChunk)
                delta = reply.delta(chunk.text, chunk.output is not None)
                for event in events.of_delta(delta):
                    yield event
                if chunk.output is not None:
                    for event in events.close():
                        yield event
                    final = _finished(shell, events.items, chunk.output)
                    kind = "completed" if final["status"] == "completed" else "incomplete"
                    yield events.make(f"response.{kind}", response=final)
        finally:
            group.close()


class _Events:
    """The Responses events of one stream, numbered, with the output items they build."""

    def __init__(self, shell: dict[str, Any]) -> None:
        self.seq = 0
        self.items: list[dict[str, Any]] = []
        self.text: dict[str, Any] | None = None  # the open message item
        self.calls: dict[int, dict[str, Any]] = {}  # open function_call items by call index

    def make(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        return {"type": kind, "sequence_number": self.seq - 1, **fields}

    def of_delta(self, delta: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        if delta.get("content"):
            if self.text is None:
                self.text = _message_item(_id("msg"), "", "in_progress")
                self.items.append(self.text)
                out.append(
                    self.make(
                        "response.output_item.added",
                        output_index=len(self.items) - 1,
                        item={**self.text, "content": []},
                    )
                )
                out.append(self._part("response.content_part.added", ""))
            self.text["content"][0]["text"] += delta["content"]
            out.append(
                self._where(
                    "response.output_text.delta",
                    self.text,
                    delta=delta["content"],
                    content_index=0,
                    logprobs=[],
                )
            )
        for call in delta.get("tool_calls", []):
            if "id" in call:  # a new call: the text before it is done
                out += self._close_text()
                item = _call_item(call, "in_progress")
                self.calls[call["index"]] = item
                self.items.append(item)
                added = {**item, "arguments": ""}
                out.append(
                    self.make(
                        "response.output_item.added", output_index=len(self.items) - 1, item=added
                    )
                )
            item = self.calls[call["index"]]
            piece = call["function"]["arguments"] if "id" not in call else item["arguments"]
            if "id" not in call:
                item["arguments"] += piece
            if piece:
                out.append(self._where("response.function_call_arguments.delta", item, delta=piece))
        return out

    def close(self) -> list[dict[str, Any]]:
        out = self._close_text()
        for item in self.calls.values():
            item["status"] = "completed"
            out.append(
                self._where(
                    "response.function_call_arguments.done",
                    item,
                    arguments=item["arguments"],
                    name=item["name"],
                )
            )
            out.append(
                self.make(
                    "response.output_item.done", output_index=self.items.index(item), item=item
                )
            )
        self.calls = {}
        return out

    def _close_text(self) -> list[dict[str, Any]]:
        if self.text is None:
            return []
        item, self.text = self.text, None
        item["status"] = "completed"
        text = item["content"][0]["text"]
        index = self.items.index(item)
        part = item["content"][0]
        return [
            self._where("response.output_text.done", item, text=text, content_index=0, logprobs=[]),
            self._where("response.content_part.done", item, content_index=0, part=part),
            self.make("response.output_item.done", output_index=index, item=item),
        ]

    def _part(self, kind: str, text: str) -> dict[str, Any]:
        assert self.text is not None
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return self._where(kind, self.text, content_index=0, part=part)

    def _where(self, kind: str, item: dict[str, Any], **fields: Any) -> dict[str, Any]:
        return self.make(kind, item_id=item["id"], output_index=self.items.index(item), **fields)


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [part],
    }


def _reasoning_item(text: str) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": _id("rs"),
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": "completed",
    }


def _call_item(call: dict[str, Any], status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": _id("fc"),
        "call_id": call["id"],
        "name": call["function"]["name"],
        "arguments": call["function"]["arguments"],
        "status": status,
    }


def _shell(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The Response object's fields known before generation (status and output to come)."""
    text = body.get("text") if isinstance(body.get("text"), dict) else None
    return {
        "id": _id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": name,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
        "previous_response_id": None,
        "reasoning": None,
        "store": False,
        "temperature": body.get("temperature", 1.0),
        "text": {"format": (text or {}).get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": None,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def _finished(
    shell: dict[str, Any], items: list[dict[str, Any]], out: GenerateOutput
) -> dict[str, Any]:
    reason = out.finish_reason.type
    status = "completed" if reason == "stop" else "incomplete"
    details = None
    if reason == "length":
        details = {"reason": "max_output_tokens"}
    elif reason != "stop":
        details = {"reason": reason}
    prompt = out.prompt_tokens
    return {
        **shell,
        "status": status,
        "incomplete_details": details,
        "output": items,
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": out.cached_tokens},
            "output_tokens": out.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + out.completion_tokens,
        },
    }
