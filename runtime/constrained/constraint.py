"""Constraint: what one request's output must match, in a normal form that keys the cache."""

from __future__ import annotations

import json
from typing import Any, NamedTuple
from urllib.parse import urldefrag, urljoin

import orjson

from ..utils.checks import nesting_depth, shown

KINDS = ("regex", "json_schema", "ebnf", "choices")
# Deeper schemas are refused whatever the engine's limits: past this, walking them with the
# standard library's recursive code could raise RecursionError.
MAX_SCHEMA_NESTING = 256
_REF_KEYS = ("$ref", "$dynamicRef", "$recursiveRef")


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
            raise ValueError(f"choices: expected a non-empty list of strings, got {shown(value)}")
        for i, c in enumerate(value):
            if not isinstance(c, str) or not c:
                raise ValueError(f"choices[{i}]: expected a non-empty string, got {shown(c)}")
        return Constraint(kind, json.dumps(list(value)))
    if not isinstance(value, str) or not value:
        raise ValueError(f"{kind}: expected a non-empty string, got {shown(value)}")
    return Constraint(kind, value)


def _schema_text(value: Any) -> str:
    if isinstance(value, str):
        try:  # orjson: a document nested too deeply is an error, not a RecursionError
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"json_schema: not valid JSON ({exc})") from None
    else:
        parsed = value
    if nesting_depth(parsed, MAX_SCHEMA_NESTING) > MAX_SCHEMA_NESTING:
        raise ValueError(f"json_schema: nested more than {MAX_SCHEMA_NESTING} levels deep")
    if isinstance(parsed, bool):  # `true` accepts any JSON value; `false` accepts nothing
        if not parsed:
            raise ValueError("json_schema: the schema `false` accepts no document")
        parsed = {}
    if not isinstance(parsed, dict):
        raise ValueError(
            f"json_schema: expected a JSON object (a schema), got {type(parsed).__name__}"
        )
    check_refs(parsed)
    # Key order is kept: property order in the schema is the order generated.
    try:
        return json.dumps(parsed, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:  # a Python caller's set, NaN, object...
        raise ValueError(f"json_schema: not a JSON document ({exc})") from None


def check_refs(schema: Any) -> None:
    """Refuse any `$ref` that leads outside the schema itself.

    A reference is resolved only within the document: "#..." fragments, or the `$id` of one
    of its own subschemas. Anything else (an http(s) URL, a file path) would make the server
    fetch or read it on the client's behalf, so it is a ValueError naming the reference.
    """
    root_id = schema.get("$id") if isinstance(schema, dict) else None
    base = root_id if isinstance(root_id, str) else ""
    ids: set[str] = set()
    refs: list[tuple[str, str]] = []  # (reference, where)
    stack: list[tuple[Any, str]] = [(schema, "")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            for key, child in node.items():
                if key == "$id" and isinstance(child, str):
                    ids.add(urldefrag(urljoin(base, child)).url)
                elif key in _REF_KEYS:
                    if not isinstance(child, str):
                        raise ValueError(f"json_schema: {key} at {where or '/'} must be a string")
                    refs.append((child, where or "/"))
                else:  # data (enum, const...) too: a "$ref" there is refused, safe side
                    stack.append((child, f"{where}/{key}"))
        elif isinstance(node, list):
            stack.extend((child, f"{where}/{i}") for i, child in enumerate(node))
    for ref, where in refs:
        if ref.startswith("#"):
            continue
        target = urldefrag(urljoin(base, ref)).url
        if target not in ids:
            raise ValueError(
                f"json_schema: $ref {shown(ref)} at {where} points outside the schema; only "
                'references within it ("#/$defs/..." or a subschema\'s $id) are resolved'
            )
