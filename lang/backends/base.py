"""The backend: the one interface between the language and a runtime.

A backend generates from text and scores token sequences. Everything else the language needs
(`select` in particular) is built here on those calls, so that every backend decides the same
way from the same logprobs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

from ..chat_template import ChatTemplate
from ..choices import ChoicesDecision, ChoicesMethod
from ..runtime.sampling.generate_request import GenerateRequest
from ..runtime.sampling.sampling_params import SamplingParams

# [logprob or None, token id, token text or None]: SGLang's logprob entry.
LogprobEntry = list[Any]
Meta = dict[str, Any]  # SGLang's meta_info of one output


class Backend(ABC):
    """Invariants: `generate` and `prompt_logprobs` are safe to call from many threads at
    once (that is how programs reach the engine together), and `prompt_logprobs` returns
    SGLang's entries: `[logprob, token_id, text]`, one per position from `start`, the first
    one's logprob null."""

    @property
    @abstractmethod
    def chat_template(self) -> ChatTemplate: ...

    @abstractmethod
    def generate(self, request: GenerateRequest) -> tuple[str | list[str], Meta | list[Meta]]:
        """(completion, meta_info) of a request for one text; lists of both when its
        sampling parameters ask for n > 1."""

    @abstractmethod
    def generate_stream(self, request: GenerateRequest) -> Iterator[tuple[str, Meta]]:
        """(new text, meta_info so far) as tokens arrive; closing it aborts the request."""

    @abstractmethod
    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """The ids the runtime computes for each text (special tokens such as BOS included)."""

    @abstractmethod
    def prompt_logprobs(self, input_ids: list[list[int]], start: int) -> list[list[LogprobEntry]]:
        """Prefill each sequence (no generation) and return its logprob entries from `start`."""

    def cache_prefix(self, text: str) -> None:
        """Compute `text` once so that programs that start with it find it cached."""
        self.generate(GenerateRequest(text=text, sampling_params=SamplingParams(max_new_tokens=0)))

    def flush_cache(self) -> bool:
        return False

    def get_server_info(self) -> dict[str, Any]:
        return {}

    def shutdown(self) -> None:  # noqa: B027 - most backends hold nothing to release
        return None

    def select(
        self, text: str, choices: list[str], temperature: float, method: ChoicesMethod
    ) -> ChoicesDecision:
        """Score every choice as a continuation of `text`, and let `method` decide.

        A choice's tokens are those of `text + choice` past the longest run of ids it shares
        with `text` alone, so a choice that merges with the text's last token is scored on
        the merged token. All choices are scored in one batch: the runtime computes the
        shared text once.
        """
        if temperature > 1e-5:
            raise ValueError(f"select: temperature must be 0, got {temperature!r}")
        *full, prefix, bos = self.tokenize([*(text + c for c in choices), text, ""])
        starts = [_shared_len(prefix, ids) for ids in full]
        for i, (ids, start) in enumerate(zip(full, starts)):
            if start >= len(ids):
                raise ValueError(f"choices[{i}]: {choices[i]!r} adds no token to the text")
        begin = max(min(starts) - 1, 0)
        rows = self.prompt_logprobs(full, begin)
        token_logprobs = [row[start - begin :] for row, start in zip(rows, starts)]
        uncond = None
        if method.requires_unconditional_logprobs:
            # The choice's own tokens after only what the runtime puts first (BOS, if any).
            alone = [bos + ids[start:] for ids, start in zip(full, starts)]
            skip = max(len(bos) - 1, 0)
            uncond = [row[len(bos) - skip :] for row in self.prompt_logprobs(alone, skip)]
        decision = method(list(choices), token_logprobs, uncond)
        decision.meta_info["choice_token_start"] = starts
        return decision


def _shared_len(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
