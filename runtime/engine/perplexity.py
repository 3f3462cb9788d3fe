"""Perplexity of a text under an engine's model, from its prompt logprobs: the measure the
quantized engines are held to (quantize.py), and any engine can be checked with.

The text is cut into windows that fit the context; each window is scored from its own start
(its first token has no logprob), and the perplexity is exp of the mean negative logprob of
every scored token.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# A few KB of TinyStories-style stories written for this project (not from the dataset).
HELDOUT_TEXT = Path(__file__).resolve().parents[1] / "assets" / "heldout_stories.txt"


def token_logprobs(engine: Any, ids: list[int], window: int | None = None) -> list[float]:
    """The logprob of every token of `ids` but each window's first, windows of `window`
    tokens (default: the engine's context)."""
    window = window or engine.max_context
    scored: list[float] = []
    for start in range(0, len(ids) - 1, window):
        piece = ids[start : start + window]
        if len(piece) < 2:
            break
        out = engine.generate(
            input_ids=piece,
            sampling_params={"max_new_tokens": 0},
            return_logprob=True,
            logprob_start_len=0,
        )
        scored += [e[0] for e in out.input_token_logprobs if e[0] is not None]
    return scored


def perplexity(engine: Any, text: str | None = None, window: int | None = None) -> float:
    """Perplexity of `text` (default: the held-out stories) under `engine`'s model."""
    if text is None:
        text = HELDOUT_TEXT.read_text()
    ids = engine.tokenizer.encode(text)
    lps = token_logprobs(engine, ids, window)
    return math.exp(-sum(lps) / len(lps))
