"""Incremental detokenization that never emits half of a multi-byte character.

Decoding one token at a time breaks words that a tokenizer spells across tokens (byte
fallback, BPE merges that split UTF-8). Instead each step decodes a short window that starts
a few tokens back and emits only the part beyond what that window's prefix already decoded
to, and only once it no longer ends in U+FFFD (an incomplete character).
"""

from __future__ import annotations

from typing import Any

_PROMPT_CONTEXT = 5  # prompt tokens decoded along with the output, for leading spaces


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int], skip_special_tokens: bool) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids = list(prompt_ids[-_PROMPT_CONTEXT:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def step(self, new_ids: list[int]) -> str:
        """Text that `new_ids` completes; may be empty while a character is incomplete."""
        self.ids.extend(new_ids)
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self, new_ids: list[int]) -> str:
        """Everything not yet emitted, complete or not (the request has ended)."""
        self.ids.extend(new_ids)
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return new_text[len(prefix_text) :]
