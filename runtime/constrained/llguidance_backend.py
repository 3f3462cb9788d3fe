"""llguidance: lazily built lexer DFAs and an Earley parser, masks by walking a token trie.

Compiles in about a millisecond, and every constraint kind goes through it. One prototype
matcher is kept per compiled grammar and deep-copied per request, so that requests share
the lazily built lexer instead of each warming up its own.
"""

from __future__ import annotations

import json
from typing import Any

import llguidance
import llguidance.hf
import torch
from llguidance.gbnf_to_lark import any_to_lark

from .bitmask import row_pointer
from .constraint import Constraint
from .json_format import JsonFormat
from .matcher import CompiledGrammar, GrammarBackend, Matcher
from .regex_text import choices_regex
from .schema_check import SchemaCheck, relaxations


class LLGuidanceMatcher(Matcher):
    __slots__ = ("_m", "_tokenizer")

    def __init__(self, m: llguidance.LLMatcher, tokenizer: llguidance.LLTokenizer) -> None:
        self._m = m
        self._tokenizer = tokenizer

    def consume(self, token: int) -> bool:
        return self._m.consume_token(token)

    def validate(self, tokens: list[int]) -> int:
        return self._m.validate_tokens(tokens)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self._m.unsafe_compute_mask_ptr(*row_pointer(bitmask, row))

    def rollback(self, num_tokens: int) -> None:
        if num_tokens and not self._m.rollback(num_tokens):
            raise RuntimeError(f"llguidance: cannot roll back {num_tokens} tokens")

    def fork(self) -> LLGuidanceMatcher:
        return LLGuidanceMatcher(self._m.deep_copy(), self._tokenizer)

    def forced_tokens(self) -> list[int]:
        return self._m.compute_ff_tokens()

    @property
    def finished(self) -> bool:
        return self._m.is_stopped() and not self._m.is_error()

    @property
    def error(self) -> str | None:
        return self._m.get_error() or None if self._m.is_error() else None

    def is_accepting(self) -> bool:
        return self._m.is_accepting()

    def tokenize_bytes(self, data: bytes) -> list[int] | None:
        return self._tokenizer.tokenize_bytes(data)

    def token_bytes(self, tokens: list[int]) -> bytes | None:
        return self._tokenizer.decode_bytes(tokens)


class LLGuidanceGrammar(CompiledGrammar):
    def __init__(
        self,
        prototype: llguidance.LLMatcher,
        check: SchemaCheck | None,
        backend: LLGuidanceBackend,
    ) -> None:
        self._prototype = prototype
        self._check = check
        self._backend = backend
        self.exact = check is None

    def matcher(self) -> Matcher:
        inner = LLGuidanceMatcher(self._prototype.deep_copy(), self._backend.tokenizer)
        if self._check is None:
            return inner
        return self._check.wrap(inner, self._backend.tokenizer.decode_bytes, self._backend.eos_ids)


class LLGuidanceBackend(GrammarBackend):
    name = "llguidance"

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        eos_ids: list[int],
        json_format: JsonFormat | None = None,
    ) -> None:
        self.vocab_size = vocab_size
        self.eos_ids = list(eos_ids)
        self.json_format = json_format or JsonFormat()
        self.tokenizer = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=vocab_size, eos_token=list(eos_ids)
        )

    def compile(self, constraint: Constraint) -> CompiledGrammar:
        if constraint.kind == "json_schema":
            return self._compile_schema(constraint)
        if constraint.kind == "regex":
            grammar = llguidance.LLMatcher.grammar_from_regex(constraint.value)
        elif constraint.kind == "choices":
            grammar = llguidance.LLMatcher.grammar_from_regex(choices_regex(constraint.choices))
        elif constraint.kind == "ebnf":
            grammar = llguidance.LLMatcher.grammar_from_lark(_as_lark(constraint.value))
        else:
            raise ValueError(f"{constraint.kind}: not a constraint kind llguidance compiles")
        return LLGuidanceGrammar(self._matcher(grammar, constraint.kind), None, self)

    def _compile_schema(self, constraint: Constraint) -> CompiledGrammar:
        """One lenient compile: keywords the grammar cannot express are skipped with a
        warning, and then (or when `oneOf` is approximated by `anyOf`) the finished document
        is checked against the full schema before EOS is allowed (schema_check). If even that
        fails, the schema is checked for validity and compiled once more, widened."""
        schema = self.json_format.prepare(json.loads(constraint.value))
        options = self.json_format.llguidance_options()
        attempts = relaxations(schema)
        try:
            prototype = self._schema_matcher(*next(attempts), options)
        except ValueError:
            # A clear error for a malformed schema, else one more try, widened.
            check = SchemaCheck.of(constraint.value, check_schema=True)
            prototype = self._schema_matcher(*next(attempts), options)
        else:
            exact = not prototype.get_grammar_warnings() and '"oneOf"' not in constraint.value
            if exact:
                return LLGuidanceGrammar(prototype, None, self)
            check = SchemaCheck.of(constraint.value)
        return LLGuidanceGrammar(prototype, check, self)

    def _schema_matcher(self, schema: dict, extra: dict, options: dict) -> llguidance.LLMatcher:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            schema, defaults={**options, **extra}
        )
        return self._matcher(grammar, "json_schema")

    def _matcher(self, grammar: str, field: str) -> llguidance.LLMatcher:
        m = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if m.is_error():
            raise ValueError(f"{field}: {_first_line(m.get_error())}")
        return m

    def tokenize_bytes(self, data: bytes) -> list[int] | None:
        return self.tokenizer.tokenize_bytes(data)

    def token_bytes(self, tokens: list[int]) -> bytes | None:
        return self.tokenizer.decode_bytes(tokens)


def _first_line(message: str) -> str:
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    return " | ".join(lines[:3]) if lines else "invalid"


def _as_lark(grammar: str) -> str:
    """An `ebnf` in Lark syntax as it is; in GBNF (`root ::= ...`, what SGLang's xgrammar,
    vLLM's guided_grammar and llama.cpp take) converted by llguidance's own translator."""
    try:
        return any_to_lark(grammar)
    except Exception as exc:  # the translator's own parse errors
        raise ValueError(f"ebnf: not a Lark or GBNF grammar: {exc}") from None
