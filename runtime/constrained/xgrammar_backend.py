"""xgrammar (optional; used where it is installed): a byte-level pushdown automaton with
token masks precomputed per grammar position, so most masks are a cached set lookup."""

from __future__ import annotations

from typing import Any

import torch

from .constraint import Constraint
from .json_format import JsonFormat
from .matcher import CompiledGrammar, GrammarBackend, Matcher
from .regex_text import choices_regex


class XGrammarMatcher(Matcher):
    def __init__(
        self,
        compiled: Any,
        xgr: Any,
        vocab: int,
        eos: frozenset[int],
        tokens: list[int] | None = None,
    ) -> None:
        self._compiled = compiled
        self._xgr = xgr
        self._vocab = vocab
        self._eos = eos
        self._m = xgr.GrammarMatcher(compiled)
        self._tokens: list[int] = []
        self._error: str | None = None
        for t in tokens or []:
            self.consume(t)

    def consume(self, token: int) -> bool:
        if self._error is not None:
            return False
        if not self._m.accept_token(token):
            self._error = f"token {token} is not allowed here"
            return False
        self._tokens.append(token)
        return True

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self._m.fill_next_token_bitmask(bitmask, row)

    def rollback(self, num_tokens: int) -> None:
        self._m.rollback(num_tokens)
        del self._tokens[len(self._tokens) - num_tokens :]

    def fork(self) -> XGrammarMatcher:
        return XGrammarMatcher(self._compiled, self._xgr, self._vocab, self._eos, self._tokens)

    def forced_tokens(self) -> list[int]:
        return []  # xgrammar gives a forced string, not canonical tokens

    def _next_mask(self) -> tuple[bool, bool]:
        """(EOS allowed, anything else allowed) next. xgrammar reports acceptance only after
        the stop token, so it is read off the mask."""
        bm = torch.zeros((1, (self._vocab + 31) // 32), dtype=torch.int32)
        self._m.fill_next_token_bitmask(bm, 0)
        eos_bits = torch.zeros_like(bm)
        for t in self._eos:
            eos_bits[0, t // 32] |= 1 << (t % 32)
        return bool((bm & eos_bits).any()), bool((bm & ~eos_bits).any())

    def is_accepting(self) -> bool:
        return self._m.is_terminated() or self._next_mask()[0]

    @property
    def finished(self) -> bool:
        if self._m.is_terminated():
            return True
        eos, other = self._next_mask()
        return eos and not other

    @property
    def error(self) -> str | None:
        return self._error


class XGrammarGrammar(CompiledGrammar):
    def __init__(self, compiled: Any, backend: XGrammarBackend) -> None:
        self._compiled = compiled
        self._backend = backend

    def matcher(self) -> Matcher:
        b = self._backend
        return XGrammarMatcher(self._compiled, b._xgr, b.vocab_size, b.eos_ids)


class XGrammarBackend(GrammarBackend):
    name = "xgrammar"

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        eos_ids: list[int],
        json_format: JsonFormat | None = None,
    ) -> None:
        try:
            import xgrammar
        except ImportError:
            raise ValueError(
                "grammar_backend: 'xgrammar' is not installed (pip install xgrammar)"
            ) from None
        self._xgr = xgrammar
        self.vocab_size = vocab_size
        self.eos_ids = frozenset(eos_ids)
        self.json_format = json_format or JsonFormat()
        info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(eos_ids)
        )
        self._compiler = xgrammar.GrammarCompiler(info, max_threads=1)

    def compile(self, constraint: Constraint) -> CompiledGrammar:
        c = self._compiler
        fmt = self.json_format
        try:
            if constraint.kind == "regex":
                compiled = c.compile_regex(constraint.value)
            elif constraint.kind == "choices":
                compiled = c.compile_regex(choices_regex(constraint.choices))
            elif constraint.kind == "json_schema":
                compiled = c.compile_json_schema(
                    constraint.value,
                    any_whitespace=fmt.whitespace is not None,
                    separators=(fmt.item_separator, fmt.key_separator),
                )
            else:
                compiled = c.compile_grammar(constraint.value)
        except Exception as exc:
            raise ValueError(f"{constraint.kind}: {exc}") from None
        return XGrammarGrammar(compiled, self)
