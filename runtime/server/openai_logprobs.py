"""Logprobs in the OpenAI layouts: completions' parallel lists (tokens, token_logprobs,
top_logprobs, text_offset) and chat's `content` entries (token, logprob, bytes,
top_logprobs). Token names come from a `TextReader`, so they read as in the text; one reader
per choice, kept across a stream's chunks."""

from __future__ import annotations

from typing import Any

from .token_text import TextReader


def completion_logprobs(
    reader: TextReader, entries: list[list], tops: list | None
) -> dict[str, Any]:
    """`entries`: the engine's [logprob, id, text] per token; `tops`: per token, its
    alternatives in the same form (None where it has none)."""
    tokens, offsets = [], []
    top: list[dict[str, float] | None] | None = [] if tops is not None else None
    for k, e in enumerate(entries):
        if top is not None:
            row = tops[k] if tops is not None and k < len(tops) else None
            top.append(None if row is None else {reader.peek(t[1]): t[0] for t in row})
        offsets.append(reader.offset)
        tokens.append(reader.read(e[1]).token)
    return {
        "tokens": tokens,
        "token_logprobs": [e[0] for e in entries],
        "top_logprobs": top,
        "text_offset": offsets,
    }


def chat_logprobs(reader: TextReader, entries: list[list], tops: list | None) -> dict[str, Any]:
    content = []
    for k, e in enumerate(entries):
        alternatives = []
        row = tops[k] if tops is not None and k < len(tops) else None
        for t in row or []:
            name = reader.peek(t[1])
            alternatives.append(
                {"token": name, "logprob": t[0], "bytes": list(reader.vocab.raw(t[1]))}
            )
        read = reader.read(e[1])
        content.append(
            {
                "token": read.token,
                "logprob": e[0],
                "bytes": list(read.raw),
                "top_logprobs": alternatives,
            }
        )
    return {"content": content, "refusal": None}
