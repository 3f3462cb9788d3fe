"""OpenAI request bodies (/v1/completions, /v1/chat/completions) checked field by field and
mapped to SGLang-style sampling_params; which fields are known, and what becomes of each, is
in openai_fields."""

from __future__ import annotations

from typing import Any, NamedTuple

from ..utils.checks import shown
from .http_io import HTTPError
from .openai_fields import (
    CHAT_FIELDS,
    COMPLETION_FIELDS,
    RENAMED,
    constraint_params,
    screen_fields,
)


class OpenAIRequest(NamedTuple):
    sampling_params: dict[str, Any]
    stream: bool
    include_usage: bool
    top_logprobs: int | None  # None: no logprobs
    rid: str | None


def parse_common(
    body: dict[str, Any], allowed: set[str], default_max_tokens: int | None, strict: bool
) -> OpenAIRequest:
    screen_fields(body, allowed, strict)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise HTTPError(400, f"model: expected a string, got {shown(model)}")
    params: dict[str, Any] = {}
    for key, value in body.items():
        if key in RENAMED and value is not None:
            name = RENAMED[key]
            if name in params and params[name] != value:
                raise HTTPError(400, f"{key}: conflicts with another field setting {name}")
            params[name] = value
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = default_max_tokens
    if max_tokens is not None:
        field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise HTTPError(400, f"{field}: expected an integer >= 0, got {shown(max_tokens)}")
        params["max_new_tokens"] = max_tokens
    for name, value in constraint_params(body).items():
        if name in params:
            raise HTTPError(400, f"{name}: asked for by two fields; send one constraint")
        params[name] = value
    stream = bool_field(body, "stream", False)
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise HTTPError(400, "stream_options: expected an object")
        if not stream:
            raise HTTPError(400, "stream_options: only allowed when stream is true")
        include_usage = bool_field(options, "include_usage", False, "stream_options.include_usage")
    rid_field = "rid" if body.get("rid") is not None else "request_id"  # SGLang's, vLLM's
    rid = body.get(rid_field)
    if rid is not None and not isinstance(rid, str):
        raise HTTPError(400, f"{rid_field}: expected a string, got {shown(rid)}")
    return OpenAIRequest(params, stream, include_usage, None, rid)


def parse_completion(
    body: dict[str, Any], max_top: int, strict: bool
) -> tuple[OpenAIRequest, bool]:
    """The request, and whether to echo the prompt. `max_top`: the most top logprobs the
    engine gives (its RequestLimits); `strict`: unknown fields are refused."""
    req = parse_common(body, COMPLETION_FIELDS, 16, strict)  # OpenAI's default of 16
    if body.get("prompt") is None:
        raise HTTPError(400, "prompt: required")
    if body.get("suffix"):
        raise HTTPError(400, "suffix: not supported")
    best_of = body.get("best_of")
    if best_of is not None and best_of != req.sampling_params.get("n", 1):
        raise HTTPError(400, "best_of: only best_of == n is supported")
    logprobs = body.get("logprobs")
    if logprobs is not None:
        _check_top(logprobs, "logprobs", max_top)
    return req._replace(top_logprobs=logprobs), bool_field(body, "echo", False)


def parse_chat(
    body: dict[str, Any], default_max_tokens: int, max_top: int, strict: bool
) -> OpenAIRequest:
    req = parse_common(body, CHAT_FIELDS, default_max_tokens, strict)
    top = None
    if bool_field(body, "logprobs", False):
        top = body.get("top_logprobs") or 0
        _check_top(top, "top_logprobs", max_top)
    elif body.get("top_logprobs") is not None:
        raise HTTPError(400, "top_logprobs: needs logprobs to be true")
    return req._replace(top_logprobs=top)


def _check_top(value: Any, field: str, max_top: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= max_top:
        raise HTTPError(
            400, f"{field}: expected an integer from 0 to {max_top}, got {shown(value)}"
        )


def bool_field(body: dict[str, Any], name: str, default: bool, field: str | None = None) -> bool:
    """A true/false field (its default when absent or null); anything else is a 400."""
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise HTTPError(400, f"{field or name}: expected true or false, got {shown(value)}")
    return value
