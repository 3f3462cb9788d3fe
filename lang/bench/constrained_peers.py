"""Uniform wrappers over loomlm's matchers and the peer libraries, for the constrained bench.

Each engine is set up once per tokenizer and offers `compile(kind, value)` returning an
object with `mask(bitmask)` (fill row 0) and `consume(token) -> bool`.
"""

from __future__ import annotations

import json
from typing import Any, cast

import torch

from ..runtime.constrained.config import ConstraintConfig
from ..runtime.constrained.constraint import Constraint, check_constraint_fields
from ..runtime.constrained.grammar_compiler import GrammarCompiler
from ..runtime.constrained.json_format import JsonFormat


def constraint(kind: str, value: Any) -> Constraint:
    fields = {"regex": None, "json_schema": None, "ebnf": None, "choices": None, kind: value}
    c = check_constraint_fields(**fields)
    assert c is not None
    return c


class Loomlm:
    name = "loomlm"

    def __init__(self, tokenizer: Any, vocab: int, eos: list[int], fmt: JsonFormat) -> None:
        # Compiles on this thread: the bench's own time limit applies.
        self.compiler = GrammarCompiler(
            tokenizer, vocab, eos, ConstraintConfig(json_format=fmt, grammar_compile_timeout=1e9)
        )
        self.compiler.backend_for("json_schema")  # tokenizer set-up outside the timings

    def compile(self, kind: str, value: Any) -> Any:
        grammar = self.compiler.backend_for(kind).compile(constraint(kind, value))
        state = [grammar.matcher()]

        def reset() -> None:  # what the engine does per request: a copy of the prototype
            state[0] = grammar.matcher()

        return _Adapter(
            lambda bm: state[0].fill_bitmask(bm, 0), lambda t: state[0].consume(t), reset
        )


class LLGuidance:
    def __init__(self, tokenizer: Any, vocab: int, eos: list[int], lenient: bool) -> None:
        import llguidance
        import llguidance.hf

        self.ll = llguidance
        self.name = "llguidance" + (" lenient" if lenient else "")
        self.tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab, eos_token=eos)
        self.options: dict[str, Any] = {
            "whitespace_flexible": False,
            "item_separator": ",",
            "key_separator": ":",
        }
        if lenient:
            self.options.update(lenient=True, coerce_one_of=True)

    def compile(self, kind: str, value: Any) -> Any:
        L = self.ll.LLMatcher
        if kind == "json_schema":
            grammar = L.grammar_from_json_schema(value, defaults=cast(Any, self.options))
        elif kind == "regex":
            grammar = L.grammar_from_regex(value)
        else:
            grammar = L.grammar_from_lark(value)
        m = L(self.tok, grammar, log_level=0)
        if m.is_error():
            raise ValueError(m.get_error()[:200])
        return _Adapter(
            lambda bm: m.unsafe_compute_mask_ptr(bm.data_ptr(), bm.shape[1] * 4),
            m.consume_token,
            m.reset,
        )


class XGrammar:
    name = "xgrammar"

    def __init__(self, tokenizer: Any, vocab: int, eos: list[int]) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab, stop_token_ids=eos)
        self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)

    def compile(self, kind: str, value: Any) -> Any:
        c = self.compiler
        if kind == "json_schema":
            g = c.compile_json_schema(json.dumps(value), separators=(",", ":"))
        elif kind == "regex":
            g = c.compile_regex(value)
        else:
            g = c.compile_grammar(value)
        m = self.xgr.GrammarMatcher(g)
        return _Adapter(lambda bm: m.fill_next_token_bitmask(bm, 0), m.accept_token, m.reset)


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, tokenizer: Any, vocab: int, eos: list[int]) -> None:
        import outlines_core

        from ..runtime.constrained.outlines_backend import outlines_vocabulary

        self.oc = outlines_core
        self.vocab = outlines_vocabulary(tokenizer, vocab, eos)
        self.eos = min(eos)

    def compile(self, kind: str, value: Any) -> Any:
        from outlines_core.json_schema import build_regex_from_schema

        if kind == "json_schema":
            regex = build_regex_from_schema(json.dumps(value), r"[ ]?")
        elif kind == "regex":
            regex = value
        else:
            raise ValueError("outlines-core has no grammars")
        guide = self.oc.Guide(self.oc.Index(regex, self.vocab))

        def mask(bm: torch.Tensor) -> None:
            bm.zero_()
            guide.write_mask_into(bm.data_ptr(), bm.shape[1], 4)

        def consume(t: int) -> bool:
            if t == self.eos:
                return guide.is_finished()
            if not guide.accepts_tokens([t]):
                return False
            guide.advance(t, return_tokens=False)
            return True

        return _Adapter(mask, consume, guide.reset)


class _Adapter:
    __slots__ = ("mask", "consume", "reset")

    def __init__(self, mask: Any, consume: Any, reset: Any) -> None:
        self.mask = mask
        self.consume = consume
        self.reset = reset


def make_engine(name: str, tokenizer: Any, vocab: int, eos: list[int]) -> Any:
    if name == "loomlm":
        return Loomlm(tokenizer, vocab, eos, JsonFormat(",", ":", strict_properties=False))
    if name == "llguidance":
        return LLGuidance(tokenizer, vocab, eos, lenient=False)
    if name == "llguidance-lenient":
        return LLGuidance(tokenizer, vocab, eos, lenient=True)
    if name == "xgrammar":
        return XGrammar(tokenizer, vocab, eos)
    if name == "outlines-core":
        return OutlinesCore(tokenizer, vocab, eos)
    raise ValueError(f"--engines: unknown engine {name!r}")
