"""How generated JSON is laid out: separators and (bounded) whitespace."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import interegular


@dataclass(slots=True, frozen=True)
class JsonFormat:
    """Separators between items and after keys, and optional whitespace between tokens.

    The default is `json.dumps`'s own layout (", " and ": ", no other whitespace): one way to
    write each document, so punctuation and keys are forced text that jump-forward skips.
    `whitespace` is a regex for the text allowed between tokens; it must match only finitely
    many strings, so that a model cannot loop on spaces.
    """

    item_separator: str = ", "
    key_separator: str = ": "
    whitespace: str | None = None  # e.g. r"[ \n]{0,4}"
    # Where a schema does not say whether an object may carry properties beyond those it
    # lists, generate only the listed ones (as xgrammar's strict mode, outlines and OpenAI's
    # strict structured outputs do). The documents still validate; False follows JSON
    # Schema's default (extra properties allowed), which a weak model may never close.
    strict_properties: bool = True

    def __post_init__(self) -> None:
        for name, mark in (("item_separator", ","), ("key_separator", ":")):
            sep = getattr(self, name)
            if sep.strip(" \n") != mark or not set(sep) <= {mark, " ", "\n"}:
                raise ValueError(f"json {name}: {sep!r}; expected {mark!r} with optional spaces")
        if self.whitespace is not None and not is_bounded(self.whitespace):
            raise ValueError(
                f"json whitespace: {self.whitespace!r} matches unboundedly long text; "
                r"expected a bounded pattern such as '[ \n]{0,4}'"
            )

    def prepare(self, schema: dict) -> dict:
        """The schema as compiled: with `strict_properties`, objects that list properties
        and leave `additionalProperties` unsaid get `additionalProperties: false`."""
        return cast(dict, _close_objects(schema)) if self.strict_properties else schema

    def llguidance_options(self) -> dict:
        options: dict = {
            "item_separator": self.item_separator,
            "key_separator": self.key_separator,
            "whitespace_flexible": self.whitespace is not None,
        }
        if self.whitespace is not None:
            options["whitespace_pattern"] = self.whitespace
        return options


def is_bounded(pattern: str) -> bool:
    """Whether a regex matches finitely many strings: no cycle through live states of its
    automaton (interegular's character-level FSM)."""
    try:
        fsm = interegular.parse_pattern(pattern).to_fsm()
    except Exception as exc:
        raise ValueError(f"json whitespace: {pattern!r} is not a valid regex ({exc})") from None
    live = {s for s in fsm.states if fsm.islive(s)}
    on_stack: set = set()
    done: set = set()

    def has_cycle(state: Any) -> bool:  # an interegular state
        on_stack.add(state)
        for nxt in fsm.map.get(state, {}).values():
            if nxt not in live:
                continue
            if nxt in on_stack or (nxt not in done and has_cycle(nxt)):
                return True
        on_stack.discard(state)
        done.add(state)
        return False

    return fsm.initial not in live or not has_cycle(fsm.initial)


_OPEN_OBJECT_KEYS = ("additionalProperties", "patternProperties", "unevaluatedProperties")
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
_DATA_KEYS = ("enum", "const", "default", "examples")


def _close_objects(node: object, in_all_of: bool = False) -> object:
    if isinstance(node, list):
        return [_close_objects(x, in_all_of) for x in node]
    if not isinstance(node, dict):
        return node
    out: dict = {}
    for key, value in node.items():
        if key in _DATA_KEYS:
            out[key] = value
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _close_objects(sub) for name, sub in value.items()}
        else:
            # The parts of an allOf are intersected: closing each would forbid the others'
            # properties, so they are left open.
            out[key] = _close_objects(value, in_all_of=key == "allOf")
    closable = "properties" in node and "allOf" not in node and "$ref" not in node
    if closable and not in_all_of and not any(k in node for k in _OPEN_OBJECT_KEYS):
        out["additionalProperties"] = False
    return out
