"""Regex building blocks shared by the backends (Rust `regex` syntax, which llguidance,
outlines-core and xgrammar all read)."""

from __future__ import annotations

_META = set("\\.+*?()|[]{}^$#&-~")


def escape(text: str) -> str:
    """`text` as a regex that matches exactly it."""
    return "".join("\\" + c if c in _META else c for c in text)


def choices_regex(choices: list[str]) -> str:
    return "(" + "|".join(escape(c) for c in choices) + ")"
