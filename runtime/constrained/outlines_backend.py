"""outlines-core: the regex's DFA crossed with the vocabulary ahead of time.

Each mask is then a table lookup (about a microsecond where few tokens are allowed), but
compiling explores every (state, token) pair: tens of milliseconds for a small regex and
seconds for a JSON schema (compiled to one regex by outlines' own translator), in a child
process with a memory cap (outlines_sandbox). Grammars (ebnf) are not regular and are
refused.
"""

from __future__ import annotations

from typing import Any

import outlines_core
import torch

from .bitmask import row_pointer
from .constraint import Constraint
from .matcher import CompiledGrammar, GrammarBackend, Matcher
from .outlines_sandbox import build_index
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
        """Compiled in a child process (outlines_sandbox): outlines-core's ahead-of-time
        compile can take more memory and time than any server has."""
        if constraint.kind in ("regex", "json_schema"):
            text = constraint.value
        elif constraint.kind == "choices":
            text = choices_regex(constraint.choices)
        else:
            raise ValueError(f"{constraint.kind}: outlines-core compiles regular languages only")
        kind = "json_schema" if constraint.kind == "json_schema" else "regex"
        index = build_index(kind, text, self.vocabulary)
        return OutlinesGrammar(index, self.eos_ids)
