"""Checking finished JSON documents against the full schema, for grammars that approximate it.

A grammar backend enforces most of JSON Schema while generating, but some keywords (e.g.
`uniqueItems`, `not`, exclusive `oneOf`, look-around patterns) cannot be expressed as a
grammar. Such schemas are compiled with those keywords relaxed, and the matcher is wrapped:
EOS is allowed only once the document validates against the whole schema (`jsonschema`). So
no document that violates the schema is ever accepted; a generation whose document cannot
be completed validly ends with an error naming the violation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import torch

from .matcher import Matcher

# Compile options: keywords the grammar cannot express are skipped (and left to the check).
_LENIENT = {"lenient": True, "coerce_one_of": True}
# Keywords dropped (widening the grammar) when even the lenient compile fails.
_WIDEN_DROP = ("pattern", "patternProperties", "format", "propertyNames", "dependencies")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "dependentSchemas")  # name -> schema
_DATA_KEYS = ("enum", "const", "default", "examples")  # values, not schemas


class SchemaCheck:
    def __init__(self, schema: dict[str, Any], validator: Any) -> None:
        self.schema = schema
        self.validator = validator

    @classmethod
    def of(cls, schema_text: str, check_schema: bool = False) -> SchemaCheck:
        """The check for a schema; `check_schema` also validates the schema itself against
        its meta-schema (milliseconds to tens of them: done only when compiling failed, to
        say why)."""
        schema = json.loads(schema_text)
        validator_cls = jsonschema.validators.validator_for(schema)
        if check_schema:
            try:
                validator_cls.check_schema(schema)
            except jsonschema.SchemaError as exc:
                where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
                raise ValueError(f"json_schema: invalid schema at {where}: {exc.message}") from None
        return cls(schema, validator_cls(schema))

    def violation(self, text: str) -> str | None:
        """Why `text` is not a valid document, or None if it is."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            return f"not JSON ({exc})"
        error = jsonschema.exceptions.best_match(self.validator.iter_errors(doc))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return f"at {where}: {error.message}"

    def wrap(
        self, inner: Matcher, decode: Callable[[list[int]], bytes], eos_ids: list[int]
    ) -> Matcher:
        return SchemaCheckedMatcher(inner, self, decode, eos_ids)


def relaxations(schema: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(schema, extra compile options) to try in order: lenient, then widened."""
    yield schema, _LENIENT
    yield _widen(schema), _LENIENT


def _widen(node: Any) -> Any:
    if isinstance(node, list):
        return [_widen(x) for x in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:  # siblings of a $ref (often circular) are left to the check
        node = {k: v for k, v in node.items() if k in ("$ref", "$defs", "definitions")}
    out = {}
    for key, value in node.items():
        if key in _WIDEN_DROP:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _widen(sub) for name, sub in value.items()}
        elif key in _DATA_KEYS:
            out[key] = value
        else:
            out[key] = _widen(value)
    return out


class SchemaCheckedMatcher(Matcher):
    def __init__(
        self,
        inner: Matcher,
        check: SchemaCheck,
        decode: Callable[[list[int]], bytes],
        eos_ids: list[int],
        tokens: list[int] | None = None,
    ) -> None:
        self._inner = inner
        self._check = check
        self._decode = decode
        self._eos = eos_ids
        self._tokens = tokens or []
        self._verdict: tuple[int, str | None] | None = None  # (len(tokens), violation)

    def _violation(self) -> str | None:
        if self._verdict is None or self._verdict[0] != len(self._tokens):
            text = self._decode(self._tokens).decode("utf-8", errors="replace")
            self._verdict = (len(self._tokens), self._check.violation(text))
        return self._verdict[1]

    def consume(self, token: int) -> bool:
        if token in self._eos and self._violation() is not None:
            return False
        if not self._inner.consume(token):
            return False
        if token not in self._eos:
            self._tokens.append(token)
        return True

    def validate(self, tokens: list[int]) -> int:
        return self._inner.validate(tokens)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self._inner.fill_bitmask(bitmask, row)
        if self._inner.is_accepting() and self._violation() is not None:
            for eos in self._eos:  # the grammar is done but the document is not valid
                bitmask[row, eos // 32] &= ~(1 << (eos % 32))

    def rollback(self, num_tokens: int) -> None:
        self._inner.rollback(num_tokens)
        del self._tokens[len(self._tokens) - num_tokens :]

    def fork(self) -> Matcher:
        return SchemaCheckedMatcher(
            self._inner.fork(), self._check, self._decode, self._eos, list(self._tokens)
        )

    def forced_tokens(self) -> list[int]:
        return self._inner.forced_tokens()

    def is_accepting(self) -> bool:
        return self._inner.is_accepting() and self._violation() is None

    @property
    def finished(self) -> bool:
        return self._inner.finished and self._violation() is None

    @property
    def error(self) -> str | None:
        if self._inner.error:
            return self._inner.error
        if self._inner.finished and (why := self._violation()) is not None:
            return f"json_schema: the document violates the schema {why}"
        return None
