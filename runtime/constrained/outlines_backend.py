"""outlines-core: the regex's DFA crossed with the vocabulary ahead of time.

Each mask is then a table lookup (about a microsecond where few tokens are allowed), but
compiling explores every (state, token) pair: tens of milliseconds for a small regex and
seconds for a JSON schema (compiled to one regex by outlines' own translator). Grammars
(ebnf) are not regular and are refused.
"""

from __future__ import annotations

from typing import Any

import outlines_core
import torch
from outlines_core.json_schema import build_regex_from_schema

from .bitmask import row_pointer
from .constraint import Constraint
from .matcher import CompiledGrammar, GrammarBackend, Matcher
from .regex_text import choices_regex
from .token_bytes import vocabulary_bytes


def outlines_vocabulary(tokenizer: Any, vocab_size: int, eos_ids: list[int]) -> Any:
    """outlines-core's Vocabulary (bytes -> ids) of a Hugging Face tokenizer, without the hub."""
    by_bytes: dict[bytes, list[int]] = {}
    for i, b in enumerate(vocabulary_bytes(tokenizer, vocab_size)):
        if b and i not in eos_ids:
            by_bytes.setdefault(b, []).append(i)
    return outlines_core.Vocabulary(min(eos_ids), by_bytes)


class OutlinesMatcher(Matcher):
    def __init__(self, index: outlines_core.Index, eos_ids: frozenset[int]) -> None:
        self._index = index
        self._guide = outlines_core.Guide(index)
        self._eos = eos_ids
        self._tokens: list[int] = []  # consumed, for fork (a Guide cannot be copied)
        self._error: str | None = None

    def consume(self, token: int) -> bool:
        if self._error is not None:
            return False
        if token in self._eos and self._guide.is_finished():
            return True
        if not self._guide.accepts_tokens([token]):
            self._error = f"token {token} is not allowed here"
            return False
        self._guide.advance(token, return_tokens=False)
        self._tokens.append(token)
        return True

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        address, size = row_pointer(bitmask, row)
        bitmask[row].zero_()  # it sets the allowed bits only
        self._guide.write_mask_into(address, size // 4, 4)

    def rollback(self, num_tokens: int) -> None:
        self._guide.rollback_state(num_tokens)
        del self._tokens[len(self._tokens) - num_tokens :]

    def fork(self) -> OutlinesMatcher:
        twin = OutlinesMatcher(self._index, self._eos)
        for t in self._tokens:
            twin.consume(t)
        return twin

    def forced_tokens(self) -> list[int]:
        return []  # outlines-core has no forced-string query; jump-forward needs llguidance

    def is_accepting(self) -> bool:
        return self._guide.is_finished()

    @property
    def finished(self) -> bool:
        if not self._guide.is_finished():
            return False
        return all(t in self._eos for t in self._guide.get_tokens())

    @property
    def error(self) -> str | None:
        return self._error


class OutlinesGrammar(CompiledGrammar):
    def __init__(self, index: outlines_core.Index, eos_ids: frozenset[int]) -> None:
        self._index = index
        self._eos = eos_ids

    def matcher(self) -> Matcher:
        return OutlinesMatcher(self._index, self._eos)


class OutlinesBackend(GrammarBackend):
    name = "outlines"

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: list[int]) -> None:
        self.vocab_size = vocab_size
        self.eos_ids = frozenset(eos_ids)
        self.vocabulary = outlines_vocabulary(tokenizer, vocab_size, eos_ids)

    def compile(self, constraint: Constraint) -> CompiledGrammar:
        if constraint.kind == "regex":
            regex = constraint.value
        elif constraint.kind == "choices":
            regex = choices_regex(constraint.choices)
        elif constraint.kind == "json_schema":
            try:
                regex = build_regex_from_schema(constraint.value, r"[ ]?")
            except Exception as exc:
                raise ValueError(f"json_schema: {exc}") from None
        else:
            raise ValueError(f"{constraint.kind}: outlines-core compiles regular languages only")
        try:
            index = outlines_core.Index(regex, self.vocabulary)
        except Exception as exc:
            raise ValueError(f"{constraint.kind}: {exc}") from None
        return OutlinesGrammar(index, self.eos_ids)
