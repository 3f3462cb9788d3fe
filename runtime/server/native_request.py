"""SGLang's `/generate` request body, checked field by field and read into the engine's
GenerateRequest."""

from __future__ import annotations

from typing import Any

from ..sampling.generate_request import GenerateRequest
from ..utils.checks import shown
from .http_io import HTTPError

# Modalities this server does not take; SGLang clients send them only when a program has one.
_MEDIA_FIELDS = ("input_embeds", "image_data", "video_data", "audio_data")


def parse_generate(body: dict[str, Any]) -> GenerateRequest:
    text, input_ids = body.get("text"), body.get("input_ids")
    if (text is None) == (input_ids is None):
        raise HTTPError(400, "text: give exactly one of `text` and `input_ids`")
    for name in _MEDIA_FIELDS:
        if body.get(name) not in (None, [], ""):
            raise HTTPError(400, f"{name}: this server takes text or token ids only")
    params = body.get("sampling_params")
    if isinstance(params, list):
        params = [sglang_params(p, f"sampling_params[{i}]") for i, p in enumerate(params)]
    else:
        params = sglang_params(params, "sampling_params")
    return GenerateRequest(
        text=text,
        input_ids=input_ids,
        sampling_params=params,
        return_logprob=one_value(body, "return_logprob", False, bool),
        logprob_start_len=one_value(body, "logprob_start_len", None, int),
        top_logprobs_num=one_value(body, "top_logprobs_num", None, int),
        return_text_in_logprobs=one_value(body, "return_text_in_logprobs", False, bool),
        rid=_rid(body.get("rid")),
        stream=one_value(body, "stream", False, bool),
        prompt_field="text" if text is not None else "input_ids",
    )


def sglang_params(params: Any, where: str) -> dict[str, Any]:
    """A sampling_params dict, less the keys SGLang's client always sends that change
    nothing here. Everything else goes to SamplingParams, which refuses unknown keys."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise HTTPError(400, f"{where}: expected an object, got {type(params).__name__}")
    params = dict(params)
    spaces = params.pop("spaces_between_special_tokens", True)
    if not isinstance(spaces, bool):
        raise HTTPError(400, f"{where}.spaces_between_special_tokens: expected true or false")
    stop_regex = params.pop("stop_regex", None)
    if stop_regex not in (None, [], ""):
        raise HTTPError(400, f"{where}.stop_regex: not supported; use `stop` strings")
    interval = params.pop("stream_interval", None)
    if interval not in (None, 1):
        raise HTTPError(400, f"{where}.stream_interval: only 1 (an event per step) is supported")
    for key in ("logit_bias", "custom_params", "structural_tag"):
        if params.get(key) in (None, {}):
            params.pop(key, None)
    return params


def one_value(body: dict[str, Any], name: str, default: Any, kind: type) -> Any:
    """A top-level field that SGLang allows per prompt (a list) but that must be the same
    for every prompt here."""
    value = body.get(name, default)
    if isinstance(value, list):
        if not value or any(v != value[0] for v in value):
            raise HTTPError(400, f"{name}: one value for every prompt is supported, got {value}")
        value = value[0]
    if value is None:
        return default
    ok = (
        isinstance(value, bool)
        if kind is bool
        else (isinstance(value, kind) and not isinstance(value, bool))
    )
    if not ok:
        expected = "true or false" if kind is bool else "an integer"
        raise HTTPError(400, f"{name}: expected {expected}, got {shown(value)}")
    return value


def _rid(rid: Any) -> Any:
    if rid is None or isinstance(rid, str):
        return rid
    if isinstance(rid, list) and all(isinstance(r, str) for r in rid):
        return rid
    raise HTTPError(400, f"rid: expected a string or a list of strings, got {shown(rid)}")
