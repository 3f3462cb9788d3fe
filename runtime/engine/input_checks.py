"""The checks a call's fields pass before they become request specs (inputs.py): prompts,
sampling parameters against the engine's limits, logprob options, request ids. Each raises a
ValueError naming the field."""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple

from ..sampling.generate_request import ParamsInput
from ..sampling.sampling_params import SamplingParams
from ..scheduler.request import LogprobRequest
from ..utils.checks import check_bool, shown
from .request_limits import RequestLimits


class Limits(NamedTuple):
    vocab_size: int
    max_context: int
    kv_slots: int
    # Text longer than this cannot fit in the context whatever it tokenizes to, so it is
    # refused before it is tokenized (see `prompt_chars_bound`).
    max_prompt_chars: int


def prompt_chars_bound(tokenizer: Any, max_context: int) -> int:
    """Characters of text that surely tokenize to more than `max_context` tokens.

    A token spells at most as many characters as its vocabulary entry has (byte-level BPE:
    a character per byte; SentencePiece: "▁" is a space, "<0xNN>" one byte), so text longer
    than context x the longest entry cannot fit; a factor of 4 leaves room for normalizers
    that compose characters, and special tokens add nothing.
    """
    if tokenizer is None:
        return 0
    longest = max((len(t) for t in tokenizer.get_vocab()), default=1)
    return 4 * max_context * max(longest, 1) + 1024


def normalize_prompts(
    prompt: Any, input_ids: Any, field: str | None = None
) -> tuple[list[str | list[int]], bool]:
    """The prompts as a list (text or ids each), and whether the caller passed a single one.
    `field` names the prompt in errors (default: "prompt" or "input_ids")."""
    if (prompt is None) == (input_ids is None):
        name = field or "prompt"
        raise ValueError(f"{name}: give exactly one of `{name}` (text) and `input_ids` (token ids)")
    value = prompt if prompt is not None else input_ids
    field = field or ("prompt" if prompt is not None else "input_ids")
    if isinstance(value, str):
        return [value], True
    if not isinstance(value, (list, tuple)):
        raise ValueError(
            f"{field}: expected a string, token ids, or a list of them; got {shown(value)}"
        )
    if not value:
        raise ValueError(f"{field}: empty")
    if all(_is_token_id(t) for t in value):
        return [list(value)], True
    prompts: list[str | list[int]] = []
    for i, p in enumerate(value):
        if isinstance(p, str):
            prompts.append(p)
        elif isinstance(p, (list, tuple)) and all(_is_token_id(t) for t in p):
            prompts.append(list(p))
        else:
            raise ValueError(f"{field}[{i}]: expected a string or a list of token ids")
    return prompts, False


def normalize_params(params: ParamsInput, count: int) -> list[SamplingParams]:
    if params is None or isinstance(params, (SamplingParams, dict)):
        return [_one_params(params)] * count
    if isinstance(params, (list, tuple)):
        if len(params) != count:
            raise ValueError(
                f"sampling_params: a list of {len(params)} for {count} prompts; expected one per prompt"
            )
        return [_one_params(p) for p in params]
    raise ValueError(
        f"sampling_params: expected SamplingParams, a dict or a list of them, got {shown(params)}"
    )


def _one_params(p: SamplingParams | dict[str, Any] | None) -> SamplingParams:
    if p is None:
        return SamplingParams()
    if isinstance(p, SamplingParams):
        return p
    if isinstance(p, dict):
        return SamplingParams.from_dict(p)
    raise ValueError(f"sampling_params: expected SamplingParams or a dict, got {type(p).__name__}")


def check_params(params: SamplingParams, limits: RequestLimits, where: str) -> None:
    """What the engine's limits allow beyond what SamplingParams checks by itself."""
    if params.n > limits.max_n:
        raise ValueError(f"{where}.n: must be <= {limits.max_n}, got {params.n} (max_n)")
    if len(params.stop) > limits.max_stop_strings:
        raise ValueError(
            f"{where}.stop: {len(params.stop)} stop strings; at most {limits.max_stop_strings} "
            "are allowed (max_stop_strings)"
        )
    chars = sum(len(s) for s in params.stop)
    if chars > limits.max_stop_chars:
        raise ValueError(
            f"{where}.stop: {chars} characters of stop strings; at most "
            f"{limits.max_stop_chars} are allowed (max_stop_chars)"
        )
    if len(params.stop_token_ids) > limits.max_stop_token_ids:
        raise ValueError(
            f"{where}.stop_token_ids: {len(params.stop_token_ids)} ids; at most "
            f"{limits.max_stop_token_ids} are allowed (max_stop_token_ids)"
        )
    if params.stop:
        params.stop_strings  # noqa: B018  built here, in the caller's thread, not the engine's


def check_prompt(ids: list[int], params: SamplingParams, limits: Limits, where: str) -> None:
    if not ids:
        raise ValueError(f"{where}: empty prompt (no tokens)")
    bad = next((t for t in ids if not 0 <= t < limits.vocab_size), None)
    if bad is not None:
        raise ValueError(f"{where}: token id {bad} is out of range [0, {limits.vocab_size})")
    biased = next((t for t in params.logit_bias or () if t >= limits.vocab_size), None)
    if biased is not None:
        raise ValueError(f"logit_bias: token id {biased} is out of range [0, {limits.vocab_size})")
    room = limits.max_context if params.max_new_tokens == 0 else limits.max_context - 1
    if len(ids) > room:
        raise ValueError(
            f"{where}: {len(ids)} tokens is longer than the model's context of "
            f"{limits.max_context} tokens (leave at least one for generation)"
        )
    if len(ids) + 1 > limits.kv_slots:
        raise ValueError(
            f"{where}: {len(ids)} tokens do not fit in the KV pool of {limits.kv_slots} tokens "
            "(raise max_total_tokens)"
        )


def make_logprob_request(
    return_logprob: Any,
    logprob_start_len: Any,
    top_logprobs_num: Any,
    with_text: Any,
    max_top: int,
) -> LogprobRequest:
    """`max_top`: the most top logprobs allowed (the limit, and never above the vocabulary)."""
    start = -1 if logprob_start_len is None else logprob_start_len
    top = 0 if top_logprobs_num is None else top_logprobs_num
    if isinstance(start, bool) or not isinstance(start, int) or start < -1:
        raise ValueError(
            f"logprob_start_len: expected an integer >= -1, got {shown(logprob_start_len)}"
        )
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= max_top:
        raise ValueError(
            f"top_logprobs_num: expected an integer from 0 to {max_top}, got {shown(top)}"
        )
    check_bool("return_logprob", return_logprob)
    check_bool("return_text_in_logprobs", with_text)
    return LogprobRequest(return_logprob, start, top, with_text)


_MAX_RID_CHARS = 256


def make_rids(rid: Any, count: int) -> list[str]:
    if rid is None:
        return [uuid.uuid4().hex for _ in range(count)]
    if isinstance(rid, str):
        if count != 1:
            raise ValueError(f"rid: one id given for {count} prompts; pass a list of ids")
        rids = [rid]
    elif isinstance(rid, (list, tuple)) and all(isinstance(r, str) for r in rid):
        rids = list(rid)
        if len(rids) != count or len(set(rids)) != count:
            raise ValueError(f"rid: expected {count} distinct ids, got {shown(rids)}")
    else:
        raise ValueError(f"rid: expected a string or a list of strings, got {shown(rid)}")
    if any(not r or len(r) > _MAX_RID_CHARS for r in rids):
        raise ValueError(f"rid: each id must be 1 to {_MAX_RID_CHARS} characters")
    return rids


def _is_token_id(t: Any) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)
