"""A prompt and the tokens asked for must fit in the model's context together.

SGLang and vLLM answer 400 when they do not, naming both numbers, unless the server runs with
`--allow-auto-truncate` (SGLang's flag): then the tokens asked for are cut to the room left.
A request that asked for no number gets the room left, as vLLM gives it (the OpenAI chat
default is "as many as fit"); the in-process engine keeps stopping at the context, since a
caller there may not know the context at all.
"""

from __future__ import annotations

from dataclasses import replace

from ..engine.inputs import RequestSpec
from .http_io import HTTPError


def fit_context(
    specs: list[RequestSpec],
    max_context: int,
    asked: list[bool],
    field: str,
    auto_truncate: bool,
) -> list[RequestSpec]:
    """`asked[k]`: whether prompt k (in the order the specs give them) named its number of
    new tokens. Specs whose prompt plus max_new_tokens overflow are refused (400 naming
    `field`) or clamped."""
    fitted = []
    k = -1
    for spec in specs:
        k += spec.sample_index == 0
        prompt, wanted = len(spec.prompt_ids), spec.params.max_new_tokens
        room = max_context - prompt
        if wanted <= room:
            fitted.append(spec)
            continue
        named = asked[k] if k < len(asked) else asked[-1]
        if named and not auto_truncate:
            raise HTTPError(
                400,
                f"{field}: {prompt} prompt tokens + {wanted} new tokens = {prompt + wanted} "
                f"exceed the model's context of {max_context} tokens; ask for at most {room} "
                "(or start the server with --allow-auto-truncate)",
            )
        params = replace(
            spec.params, max_new_tokens=room, min_new_tokens=min(spec.params.min_new_tokens, room)
        )
        fitted.append(spec._replace(params=params))
    return fitted
