"""OpenAI request bodies (/v1/completions, /v1/chat/completions) checked field by field and
mapped to SGLang-style sampling_params. Unknown fields are refused, as OpenAI refuses them."""

from __future__ import annotations

from typing import Any, NamedTuple

from ..constrained.request_formats import response_format_params
from ..utils.checks import shown
from .http_io import HTTPError

# OpenAI name -> sampling_params name, for fields that map one to one.
_RENAMED = {
    "temperature": "temperature",
    "top_p": "top_p",
    "n": "n",
    "stop": "stop",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    # SGLang's and vLLM's extensions, passed the same way
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "min_tokens": "min_new_tokens",
    "ignore_eos": "ignore_eos",
    "regex": "regex",
    "json_schema": "json_schema",
    "ebnf": "ebnf",
    "stop_token_ids": "stop_token_ids",
    "skip_special_tokens": "skip_special_tokens",
    "no_stop_trim": "no_stop_trim",
}
# Accepted and without effect here.
_IGNORED = {"model", "user", "metadata", "store", "service_tier", "stream_options", "stream"}
_COMMON = set(_RENAMED) | _IGNORED | {"max_tokens", "logit_bias", "response_format", "rid"}
COMPLETION_FIELDS = _COMMON | {"prompt", "echo", "logprobs", "suffix", "best_of"}
CHAT_FIELDS = _COMMON | {
    "messages",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "add_generation_prompt",
    "chat_template_kwargs",
}


class OpenAIRequest(NamedTuple):
    sampling_params: dict[str, Any]
    stream: bool
    include_usage: bool
    top_logprobs: int | None  # None: no logprobs
    rid: str | None


def parse_common(
    body: dict[str, Any], allowed: set[str], default_max_tokens: int | None
) -> OpenAIRequest:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise HTTPError(400, f"{', '.join(unknown)}: unrecognized request field(s)")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise HTTPError(400, f"model: expected a string, got {shown(model)}")
    params = {_RENAMED[k]: v for k, v in body.items() if k in _RENAMED and v is not None}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = default_max_tokens
    if max_tokens is not None:
        field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise HTTPError(400, f"{field}: expected an integer >= 0, got {shown(max_tokens)}")
        params["max_new_tokens"] = max_tokens
    if body.get("logit_bias"):
        raise HTTPError(400, "logit_bias: not supported")
    if body.get("response_format") is not None:
        try:
            params.update(response_format_params(body["response_format"]))
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
    stream = _bool(body, "stream", False)
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise HTTPError(400, "stream_options: expected an object")
        if not stream:
            raise HTTPError(400, "stream_options: only allowed when stream is true")
        include_usage = _bool(options, "include_usage", False, "stream_options.include_usage")
    rid = body.get("rid")
    if rid is not None and not isinstance(rid, str):
        raise HTTPError(400, f"rid: expected a string, got {shown(rid)}")
    return OpenAIRequest(params, stream, include_usage, None, rid)


def parse_completion(body: dict[str, Any], max_top: int) -> tuple[OpenAIRequest, bool]:
    """The request, and whether to echo the prompt. `max_top`: the most top logprobs the
    engine gives (its RequestLimits)."""
    req = parse_common(body, COMPLETION_FIELDS, default_max_tokens=16)  # OpenAI's default
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
    return req._replace(top_logprobs=logprobs), _bool(body, "echo", False)


def parse_chat(body: dict[str, Any], default_max_tokens: int, max_top: int) -> OpenAIRequest:
    req = parse_common(body, CHAT_FIELDS, default_max_tokens)
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools or choice not in (None, "none"):
        raise HTTPError(400, "tools: tool calling is not supported")
    top = None
    if _bool(body, "logprobs", False):
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


def _bool(body: dict[str, Any], name: str, default: bool, field: str | None = None) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise HTTPError(400, f"{field or name}: expected true or false, got {shown(value)}")
    return value
