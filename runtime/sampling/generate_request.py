"""GenerateRequest: one call's generation request, the typed description every layer shares.

The language builds one per `gen` and hands it to its backend; the in-process backend gives
it to `Engine.generate_request`, the HTTP backend sends `to_json()` as SGLang's `/generate`
body, and the server reads that body back with `from_json` before the engine turns it into
request specs. The field names are SGLang's (`GenerateReqInput`). This module needs no torch:
the language imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .sampling_params import SamplingParams

PromptInput = str | Sequence[int] | Sequence[str] | Sequence[Sequence[int]]
ParamsInput = SamplingParams | dict[str, Any] | Sequence[SamplingParams | dict[str, Any]] | None


@dataclass(slots=True)
class GenerateRequest:
    """Exactly one of `text` (one string or a list) and `input_ids` (ids, or a list of id
    lists); `sampling_params` one for all prompts or a list of one per prompt. Values are
    checked where the engine takes the request (ValueError naming the field)."""

    text: PromptInput | None = None  # (the engine also takes token ids here)
    input_ids: Sequence[int] | Sequence[Sequence[int]] | None = None
    sampling_params: ParamsInput = None
    return_logprob: bool = False
    logprob_start_len: int | None = None
    top_logprobs_num: int | None = None
    return_text_in_logprobs: bool = False
    rid: str | Sequence[str] | None = None
    stream: bool = False
    # Not SGLang's: what errors call the prompt ("text", "messages"...); default "prompt".
    prompt_field: str | None = None

    def to_json(self) -> dict[str, Any]:
        """SGLang's `/generate` body (sampling parameters left at their defaults omitted)."""
        body: dict[str, Any] = {}
        if self.text is not None:
            body["text"] = self.text
        if self.input_ids is not None:
            body["input_ids"] = self.input_ids
        params = self.sampling_params
        if isinstance(params, (SamplingParams, dict)):
            body["sampling_params"] = _params_json(params)
        elif params is not None:
            body["sampling_params"] = [_params_json(p) for p in params]
        for name in ("return_logprob", "return_text_in_logprobs", "stream"):
            if getattr(self, name):
                body[name] = True
        for name in ("logprob_start_len", "top_logprobs_num", "rid"):
            if getattr(self, name) is not None:
                body[name] = getattr(self, name)
        return body


def _params_json(params: SamplingParams | dict[str, Any]) -> dict[str, Any]:
    return params.to_dict() if isinstance(params, SamplingParams) else dict(params)
