"""ConstraintConfig: how constraints compile, and how generated JSON is laid out."""

from __future__ import annotations

from dataclasses import dataclass

from ..utils.checks import check_bool, check_float, check_int
from ..utils.options import option
from .json_format import JsonFormat

BACKENDS = ("auto", "llguidance", "outlines", "xgrammar")


@dataclass(frozen=True, slots=True)
class ConstraintConfig:
    grammar_backend: str = option(
        "auto",
        "compiles regex / json_schema / ebnf / choices: auto (the measured best per kind), "
        "llguidance, outlines (regular languages only) or xgrammar (if installed)",
        choices=BACKENDS,
    )
    disable_jump_forward: bool = option(
        False, "sample forced constrained text token by token instead of appending it"
    )
    json_format: JsonFormat | None = option(
        None, "separators and bounded whitespace of generated JSON (a JsonFormat)", cli=False
    )
    grammar_compile_timeout: float = option(
        10.0, "seconds a constraint may take to compile before the request is refused"
    )
    grammar_cache_bytes: int = option(
        256 << 20,
        "budget of the compiled-grammar cache (estimated bytes per grammar); the least "
        "recently used go first",
    )

    def __post_init__(self) -> None:
        if self.grammar_backend not in BACKENDS:
            raise ValueError(
                f"grammar_backend: {self.grammar_backend!r}; expected one of {', '.join(BACKENDS)}"
            )
        check_bool("disable_jump_forward", self.disable_jump_forward)
        if self.json_format is not None and not isinstance(self.json_format, JsonFormat):
            raise ValueError(
                f"json_format: expected a JsonFormat, got {type(self.json_format).__name__}"
            )
        check_float("grammar_compile_timeout", self.grammar_compile_timeout, low=0.0, low_open=True)
        check_int("grammar_cache_bytes", self.grammar_cache_bytes, low=0)
