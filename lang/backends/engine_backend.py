"""The in-process backend: programs call a `loomlm.runtime.Engine` directly, without HTTP.

This module touches the engine only through its public methods, so `import loomlm` still
needs no torch: the engine is built (and torch imported) by whoever passes one in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..chat_template import ChatTemplate, resolve_template
from .base import Backend


class EngineBackend(Backend):
    """Args:
    engine: a running `loomlm.runtime.Engine` (with a tokenizer).
    chat_template: a ChatTemplate or a template name; default: the tokenizer's own chat
        template, else the plain default.
    """

    def __init__(self, engine: Any, chat_template: ChatTemplate | str | None = None) -> None:
        tokenizer = engine.tokenizer
        if tokenizer is None:
            raise ValueError("backend: programs need an engine with a tokenizer")
        self.engine = engine
        self._template = resolve_template(
            chat_template,
            getattr(tokenizer, "chat_template", None),
            getattr(tokenizer, "bos_token", None),
            getattr(tokenizer, "eos_token", None),
        )

    @property
    def chat_template(self) -> ChatTemplate:
        return self._template

    def generate(self, text, params, logprob):
        out = self.engine.generate(text, params, **logprob)
        if isinstance(out, list):
            return [o.text for o in out], [_meta(o) for o in out]
        return out.text, _meta(out)

    def generate_stream(self, text, params, logprob) -> Iterator[tuple[str, dict[str, Any]]]:
        completion = 0
        for chunk in self.engine.stream(text, params, **logprob):
            completion += len(chunk.token_ids)
            if chunk.output is not None:
                yield chunk.text, _meta(chunk.output)
            elif chunk.text:
                yield chunk.text, {"completion_tokens": completion, "finish_reason": None}

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        encode = self.engine.tokenizer.encode
        return [encode(t) for t in texts]

    def prompt_logprobs(self, input_ids: list[list[int]], start: int) -> list[list[list]]:
        outs = self.engine.generate(
            input_ids=input_ids,
            sampling_params={"max_new_tokens": 0},
            return_logprob=True,
            logprob_start_len=start,
            return_text_in_logprobs=True,
        )
        return [o.input_token_logprobs for o in outs]

    def flush_cache(self) -> bool:
        return self.engine.flush_cache()

    def get_server_info(self) -> dict[str, Any]:
        return dict(self.engine.stats())


def _meta(out: Any) -> dict[str, Any]:
    return out.to_dict()["meta_info"]
