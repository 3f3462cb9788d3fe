"""The in-process backend: programs call a `loomlm.runtime.Engine` directly, without HTTP.

This module touches the engine only through `EngineLike` (below), so `import loomlm` still
needs no torch: the engine is built (and torch imported) by whoever passes one in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from ..chat_template import ChatTemplate, resolve_template
from ..runtime.sampling.generate_request import GenerateRequest
from ..runtime.sampling.sampling_params import SamplingParams
from .base import Backend, LogprobEntry, Meta


class Output(Protocol):
    """A finished request (the runtime's GenerateOutput)."""

    text: str
    input_token_logprobs: list[LogprobEntry] | None

    def to_dict(self) -> dict[str, Any]: ...


class Chunk(Protocol):
    """A piece of a streamed request (the runtime's StreamChunk)."""

    text: str
    token_ids: list[int]
    output: Output | None


@runtime_checkable
class EngineLike(Protocol):
    """What a program needs of an in-process engine (`loomlm.runtime.Engine` has it all)."""

    tokenizer: Any  # a Hugging Face tokenizer, or None

    def generate_request(self, request: GenerateRequest) -> Any: ...

    def stream_request(self, request: GenerateRequest) -> Iterator[Any]: ...

    def flush_cache(self) -> bool: ...

    def stats(self) -> dict[str, int | float]: ...


class EngineBackend(Backend):
    """Args:
    engine: a running `loomlm.runtime.Engine` (with a tokenizer).
    chat_template: a ChatTemplate or a template name; default: the tokenizer's own chat
        template, else the plain default.
    """

    def __init__(self, engine: EngineLike, chat_template: ChatTemplate | str | None = None) -> None:
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

    def generate(self, request: GenerateRequest) -> tuple[str | list[str], Meta | list[Meta]]:
        out = self.engine.generate_request(request)
        if isinstance(out, list):
            return [o.text for o in out], [_meta(o) for o in out]
        return out.text, _meta(out)

    def generate_stream(self, request: GenerateRequest) -> Iterator[tuple[str, Meta]]:
        completion = 0
        chunk: Chunk
        for chunk in self.engine.stream_request(request):
            completion += len(chunk.token_ids)
            if chunk.output is not None:
                yield chunk.text, _meta(chunk.output)
            elif chunk.text:
                yield chunk.text, {"completion_tokens": completion, "finish_reason": None}

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        encode = self.engine.tokenizer.encode
        return [encode(t) for t in texts]

    def prompt_logprobs(self, input_ids: list[list[int]], start: int) -> list[list[LogprobEntry]]:
        outs: list[Output] = self.engine.generate_request(
            GenerateRequest(
                input_ids=input_ids,
                sampling_params=SamplingParams(max_new_tokens=0),
                return_logprob=True,
                logprob_start_len=start,
                return_text_in_logprobs=True,
            )
        )
        return [o.input_token_logprobs or [] for o in outs]

    def flush_cache(self) -> bool:
        return self.engine.flush_cache()

    def get_server_info(self) -> dict[str, Any]:
        return dict(self.engine.stats())


def _meta(out: Output) -> Meta:
    return out.to_dict()["meta_info"]
