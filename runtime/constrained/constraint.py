"""Constraint: what one request's output must match, in a normal form that keys the cache."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

KINDS = ("regex", "json_schema", "ebnf", "choices")


class Constraint(NamedTuple):
    kind: str  # one of KINDS
    value: str  # the regex / the schema as JSON text / the grammar / the choices as JSON list

    @property
    def choices(self) -> list[str]:
        return json.loads(self.value)

    def describe(self) -> str:
        text = self.value if len(self.value) <= 60 else self.value[:57] + "..."
        return f"{self.kind} {text!r}"


def check_constraint_fields(
    regex: Any, json_schema: Any, ebnf: Any, choices: Any
) -> Constraint | None:
    """Validate the constraint fields of sampling params (types, exclusivity, JSON syntax)
    and return the normalised constraint; compilation errors come later, from the backend."""
    given = {
        k: v
        for k, v in (
            ("regex", regex),
            ("json_schema", json_schema),
            ("ebnf", ebnf),
            ("choices", choices),
        )
        if v is not None
    }
    if len(given) > 1:
        raise ValueError(
            f"{', '.join(given)}: only one constraint per request; "
            "expected at most one of regex, json_schema, ebnf and choices"
        )
    if not given:
        return None
    ((kind, value),) = given.items()
    if kind == "json_schema":
        return Constraint(kind, _schema_text(value))
    if kind == "choices":
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"choices: expected a non-empty list of strings, got {value!r}")
        for i, c in enumerate(value):
            if not isinstance(c, str) or not c:
                raise ValueError(f"choices[{i}]: expected a non-empty string, got {c!r}")
        return Constraint(kind, json.dumps(list(value)))
    if not isinstance(value, str) or not value:
        raise ValueError(f"{kind}: expected a non-empty string, got {value!r}")
    return Constraint(kind, value)


def _schema_text(value: Any) -> str:
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"json_schema: not valid JSON ({exc})") from None
    else:
        parsed = value
    if isinstance(parsed, bool):  # `true` accepts any JSON value; `false` accepts nothing
        if not parsed:
            raise ValueError("json_schema: the schema `false` accepts no document")
        parsed = {}
    if not isinstance(parsed, dict):
        raise ValueError(
            f"json_schema: expected a JSON object (a schema), got {type(parsed).__name__}"
        )
    # Key order is kept: property order in the schema is the order generated.
    return json.dumps(parsed, separators=(",", ":"), ensure_ascii=False)
