"""Jump-forward (the compressed FSM of the SGLang paper): where the constraint admits exactly
one continuation, append it at once instead of sampling it token by token.

The forced text is tokenized together with the token sampled just before it, so that the
model sees canonical tokens across the boundary: if the sampled `{` and the forced `"name"`
tokenize canonically as `{"` + `name` + `"`, the sampled token is replaced. Only the
just-sampled token can change, and its KV is not computed yet, so nothing is recomputed.
The appended tokens are then computed in one extend step, which is where the saving is.
"""

from __future__ import annotations

from typing import NamedTuple

from .matcher import Matcher


class Jump(NamedTuple):
    replace_last: int | None  # the canonical token that replaces the just-sampled one
    tokens: list[int]  # appended after it (already consumed by the matcher)


def jump_forward(matcher: Matcher, last_token: int, max_tokens: int) -> Jump | None:
    """Advance `matcher` over the forced continuation after `last_token` (just consumed) and
    return what to write; None when nothing is forced. At most `max_tokens` are appended."""
    if max_tokens <= 0:
        return None
    forced = matcher.forced_tokens()
    if not forced:
        return None
    jump = _retokenized(matcher, last_token, forced, max_tokens)
    if jump is not None:
        return jump
    forced = forced[:max_tokens]
    if matcher.validate(forced) < len(forced):
        return None
    for t in forced:
        matcher.consume(t)
    return Jump(None, forced)


def _retokenized(matcher: Matcher, last: int, forced: list[int], max_tokens: int) -> Jump | None:
    last_bytes = matcher.token_bytes([last])
    forced_bytes = matcher.token_bytes(forced)
    if not last_bytes or forced_bytes is None:
        return None
    canon = matcher.tokenize_bytes(last_bytes + forced_bytes)
    if not canon or matcher.token_bytes(canon) != last_bytes + forced_bytes:
        return None
    if canon[0] == last:
        if canon[1:] == forced:
            return None  # already canonical: the plain path appends it
        replace, tail = None, canon[1:]
    else:
        replace, tail = canon[0], canon[1:]
    tail = tail[:max_tokens]
    if replace is not None:
        matcher.rollback(1)
    todo = ([replace] if replace is not None else []) + tail
    if matcher.validate(todo) < len(todo):
        if replace is not None:  # not a continuation the matcher takes: restore the sample
            matcher.consume(last)
        return None
    for t in todo:
        matcher.consume(t)
    return Jump(replace, tail)
