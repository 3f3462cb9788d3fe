"""Checking finished JSON documents against the full schema, for grammars that approximate it.

A grammar backend enforces most of JSON Schema while generating, but some keywords (e.g.
`uniqueItems`, `not`, exclusive `oneOf`, look-around patterns) cannot be expressed as a
grammar. Such schemas are compiled with those keywords relaxed, and the matcher is wrapped:
EOS is allowed only once the document validates against the whole schema (`jsonschema`). So
no document that violates the schema is ever accepted; a generation whose document cannot
be completed validly ends with an error naming the violation.

The check runs on the engine thread, on a client's schema, so it is fenced: references
resolve only within the schema (no retrieval, never the network or the disk); `pattern` and
`patternProperties` are matched with the `regex` module under a time limit (Python's `re`
cannot be interrupted, and one backtracking pattern on a short string can take minutes);
and anything the check raises ends that request alone with the reason, never the engine.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import referencing
import regex
import torch

from ..utils.checks import shown
from .matcher import Matcher

# Seconds one check of a finished document may take, all its regex matches together.
CHECK_SECONDS = 1.0

# Compile options: keywords the grammar cannot express are skipped (and left to the check).
_LENIENT = {"lenient": True, "coerce_one_of": True}
# Keywords dropped (widening the grammar) when even the lenient compile fails.
_WIDEN_DROP = ("pattern", "patternProperties", "format", "propertyNames", "dependencies")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "dependentSchemas")  # name -> schema
_DATA_KEYS = ("enum", "const", "default", "examples")  # values, not schemas


class CheckFailed(Exception):
    """The document could not be checked (out of time, an unresolvable reference...)."""


class SchemaCheck:
    def __init__(self, schema: dict[str, Any], validator: Any) -> None:
        self.schema = schema
        self.validator = validator

    @classmethod
    def of(cls, schema_text: str, check_schema: bool = False) -> SchemaCheck:
        """The check for a schema; `check_schema` also validates the schema itself against
        its meta-schema (milliseconds to tens of them: done only when compiling failed, to
        say why). ValueError naming the pattern when a regex cannot be checked."""
        schema = json.loads(schema_text)
        validator_cls = jsonschema.validators.validator_for(schema)
        if check_schema:
            meta = validator_cls.META_SCHEMA
            checker = jsonschema.validators.validator_for(meta)(meta, format_checker=_FORMATS)
            error = jsonschema.exceptions.best_match(checker.iter_errors(schema))
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                raise ValueError(f"json_schema: invalid schema at {where}: {error.message}")
        _check_patterns(schema)
        fenced = jsonschema.validators.extend(validator_cls, _TIMED_KEYWORDS)
        # An empty registry retrieves nothing: jsonschema's default one would fetch URLs.
        return cls(schema, fenced(schema, registry=referencing.Registry()))

    def violation(self, text: str) -> str | None:
        """Why `text` is not a valid document, or None if it is; CheckFailed when that
        cannot be decided within CHECK_SECONDS (or at all)."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            return f"not JSON ({exc})"
        except RecursionError:
            return "not JSON (nested too deeply)"
        _check_state.deadline = time.monotonic() + CHECK_SECONDS
        try:
            error = jsonschema.exceptions.best_match(self.validator.iter_errors(doc))
        except TimeoutError:
            raise CheckFailed(
                f"checking the document against the schema took over {CHECK_SECONDS:g} s "
                "(a pattern that backtracks?)"
            ) from None
        except Exception as exc:
            raise CheckFailed(
                f"the document could not be checked: {type(exc).__name__}: {exc}"
            ) from None
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return f"at {where}: {error.message}"

    def wrap(
        self, inner: Matcher, decode: Callable[[list[int]], bytes], eos_ids: list[int]
    ) -> Matcher:
        return SchemaCheckedMatcher(inner, self, decode, eos_ids)


# The deadline of the check in progress on this thread (an engine thread runs one at a time).
_check_state = threading.local()


def _search(pattern: str, text: str) -> bool:
    left = _check_state.deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return regex.search(pattern, text, timeout=left) is not None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield jsonschema.ValidationError(f"{shown(instance)} does not match {shown(pattern)}")


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for k, v in instance.items():
            if _search(pattern, k):
                yield from validator.descend(v, subschema, path=k, schema_path=pattern)


def _additional_properties(validator: Any, aP: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    known = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [k for k in instance if k not in known and not any(_search(p, k) for p in patterns)]
    if validator.is_type(aP, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], aP, path=extra)
    elif not aP and extras:
        yield jsonschema.ValidationError(
            f"additional properties are not allowed ({shown(sorted(extras))} unexpected)"
        )


_TIMED_KEYWORDS = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
}


# The meta-schema's formats, but "regex" as the check matches them: with `regex`, which
# knows what `re` does not (\p{Lu}...).
_FORMATS = jsonschema.FormatChecker(formats=jsonschema.FormatChecker.checkers)


@_FORMATS.checks("regex", raises=(regex.error, TypeError))
def _is_regex(instance: object) -> bool:
    if isinstance(instance, str):
        regex.compile(instance)
    return True


def _check_patterns(schema: Any) -> None:
    """Every regex the check will run must compile; and jsonschema's `unevaluatedProperties`
    matches patternProperties with `re`, which no time limit reaches, so the two together
    are refused."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        patterns = []
        if isinstance(node.get("pattern"), str):
            patterns.append(node["pattern"])
        if isinstance(node.get("patternProperties"), dict):
            patterns.extend(node["patternProperties"])
            if "unevaluatedProperties" in node:
                raise ValueError(
                    "json_schema: unevaluatedProperties beside patternProperties is not supported"
                )
        for pattern in patterns:
            try:
                regex.compile(pattern)
            except (regex.error, TypeError) as exc:
                raise ValueError(
                    f"json_schema: pattern {shown(pattern)} cannot be checked: {exc}"
                ) from None
        stack.extend(node.values())


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
        self._failed: str | None = None  # why the check could not be made (ends the request)

    def _violation(self) -> str | None:
        if self._failed is not None:
            return self._failed
        if self._verdict is None or self._verdict[0] != len(self._tokens):
            text = self._decode(self._tokens).decode("utf-8", errors="replace")
            try:
                verdict = self._check.violation(text)
            except CheckFailed as exc:
                self._failed = verdict = f"json_schema: {exc}"
            self._verdict = (len(self._tokens), verdict)
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

    def tokenize_bytes(self, data: bytes) -> list[int] | None:
        return self._inner.tokenize_bytes(data)

    def token_bytes(self, tokens: list[int]) -> bytes | None:
        return self._inner.token_bytes(tokens)

    def is_accepting(self) -> bool:
        return self._inner.is_accepting() and self._violation() is None

    @property
    def finished(self) -> bool:
        return self._inner.finished and self._violation() is None

    @property
    def error(self) -> str | None:
        if self._inner.error:
            return self._inner.error
        if self._failed is not None:
            return self._failed
        if self._inner.finished and (why := self._violation()) is not None:
            return f"json_schema: the document violates the schema {why}"
        return None
