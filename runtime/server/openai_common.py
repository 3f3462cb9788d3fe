"""What the OpenAI endpoints share: finish reasons, usage, the engine request for an OpenAI
one, and the server-sent choices of a stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from ..engine.engine import Engine
from ..engine.inputs import RequestSpec
from ..engine.outputs import GenerateOutput, StreamChunk
from ..sampling.generate_request import GenerateRequest
from .engine_client import RequestGroup
from .openai_request import OpenAIRequest


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


def max_top(engine: Engine) -> int:
    """The most top logprobs a request may ask for: the engine's limit, and the vocabulary."""
    return min(engine.request_limits.max_top_logprobs, engine.model_config.vocab_size)


def generate_request(
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


async def stream_choices(
    group: RequestGroup,
    head: dict[str, Any],
    req: OpenAIRequest,
    specs: list[RequestSpec],
    openings: list[dict[str, Any]],
    fields: Callable[[int, StreamChunk, bool], dict[str, Any] | None],
) -> AsyncIterator[Any]:
    """What both endpoints stream: the opening choices, then a choice per chunk with
    something to say (`fields` gives its content; None while text is held back), its
    finish reason on the last (unless `fields` gives its own), and with include_usage a
    closing usage event."""
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
            choice = {"index": i, "finish_reason": reason, **content}  # content may override
            yield {**head, "choices": [choice], **extra}
        if req.include_usage:
            yield {**head, "choices": [], "usage": usage(specs, outputs)}  # type: ignore[arg-type]
    finally:
        group.close()
