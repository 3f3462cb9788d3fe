"""Size checks of a constraint against the engine's RequestLimits, before it is compiled.

The grammar compilers are native code: a grammar too large or too deep for them is not an
exception but a crashed process, so their input is bounded here first.
"""

from __future__ import annotations

import re

import orjson

from ..engine.request_limits import RequestLimits
from ..utils.checks import nesting_depth
from .constraint import Constraint

# A Lark rule or terminal definition: `name: ...`, `?name: ...`, `NAME.2: ...` at a line start.
_LARK_DEFINITION = re.compile(r"^[ \t]*[?!]?[A-Za-z_][A-Za-z_0-9]*(?:\.-?\d+)?[ \t]*:", re.M)


def check_constraint_size(constraint: Constraint, limits: RequestLimits) -> None:
    """ValueError naming the field when `constraint` is over a limit."""
    kind, text = constraint
    if len(text) > limits.max_constraint_chars:
        raise ValueError(
            f"{kind}: {len(text)} characters; at most {limits.max_constraint_chars} are "
            "allowed (max_constraint_chars)"
        )
    if kind == "json_schema":
        depth = nesting_depth(orjson.loads(text), limits.max_schema_depth)
        if depth > limits.max_schema_depth:
            raise ValueError(
                f"json_schema: nested more than {limits.max_schema_depth} levels deep "
                "(max_schema_depth)"
            )
    elif kind == "ebnf":
        rules = len(_LARK_DEFINITION.findall(text))
        if rules > limits.max_grammar_rules:
            raise ValueError(
                f"ebnf: {rules} rules; at most {limits.max_grammar_rules} are allowed "
                "(max_grammar_rules)"
            )
