"""What the language's results are checked against: the engine, called directly."""

from __future__ import annotations

from typing import Any


def greedy(engine: Any, text: str, **params: Any) -> Any:
    return engine.generate(text, {"temperature": 0, **params})


def choice_logprobs(engine: Any, text: str, choice: str) -> tuple[list[float], list[float]]:
    """The logprobs of `choice`'s tokens after `text` and after BOS alone, each scored in its
    own request over the whole sequence."""
    tok = engine.tokenizer
    prefix, full = tok.encode(text), tok.encode(text + choice)
    start = next(i for i, (a, b) in enumerate(zip(prefix + [None], full)) if a != b)
    out = engine.generate(
        input_ids=[full],
        sampling_params={"max_new_tokens": 0},
        return_logprob=True,
        logprob_start_len=0,
    )[0]
    cond = [e[0] for e in out.input_token_logprobs[start:]]
    bos = tok.encode("")
    alone = engine.generate(
        input_ids=[bos + full[start:]],
        sampling_params={"max_new_tokens": 0},
        return_logprob=True,
        logprob_start_len=0,
    )[0]
    uncond = [e[0] or 0.0 for e in alone.input_token_logprobs[len(bos) :]]
    return cond, uncond
