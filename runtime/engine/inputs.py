"""Turning what a caller passes to `Engine.generate` into validated request specs.

All validation happens here, in the caller's thread, so that bad input raises a ValueError
naming the field before anything reaches the engine loop.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

from ..constrained.constraint_limits import check_constraint_size
from ..constrained.grammar_compiler import GrammarCompiler
from ..constrained.matcher import CompiledGrammar
from ..sampling.generate_request import GenerateRequest, ParamsInput
from ..sampling.sampling_params import SamplingParams
from ..scheduler.detokenizer import IncrementalDetokenizer
from ..scheduler.request import LogprobRequest, Request
from ..utils.checks import check_bool, shown
from .outputs import Event
from .request_limits import RequestLimits


class RequestSpec(NamedTuple):
    rid: str
    prompt_ids: list[int]
    params: SamplingParams
    logprob: LogprobRequest
    sample_index: int  # which of the `n` samples of its prompt this is
    grammar: CompiledGrammar | None  # the compiled constraint, if the params carry one
    call: int  # which call (generate, HTTP request) it came from: the scheduler shares fairly


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


class SpecBuilder:
    """Turns `Engine.generate`'s arguments into validated request specs, tokenizing text."""

    def __init__(
        self,
        tokenizer: Any,
        limits: Limits,
        grammars: GrammarCompiler | None,
        request_limits: RequestLimits,
    ) -> None:
        self.tokenizer = tokenizer
        self.limits = limits
        self.grammars = grammars
        self.request_limits = request_limits
        self._calls = itertools.count()

    def specs(self, request: GenerateRequest) -> tuple[list[RequestSpec], bool]:
        """Validate, tokenize and compile one call's requests. Returns the specs
        (prompt-major: the n samples of the first prompt, then the second's...) and whether
        a single prompt was given."""
        prompts, single = normalize_prompts(request.text, request.input_ids, request.prompt_field)
        params = normalize_params(request.sampling_params, len(prompts))
        max_top = min(self.request_limits.max_top_logprobs, self.limits.vocab_size)
        logprob = make_logprob_request(
            request.return_logprob,
            request.logprob_start_len,
            request.top_logprobs_num,
            request.return_text_in_logprobs,
            max_top,
        )
        rids = make_rids(request.rid, len(prompts))
        for i, sp in enumerate(params):  # all checked before any prompt is tokenized
            check_params(
                sp,
                self.request_limits,
                f"sampling_params[{i}]" if len(params) > 1 else "sampling_params",
            )
        samples = sum(sp.n for sp in params)
        if samples > self.request_limits.max_queued_requests:
            raise ValueError(
                f"sampling_params.n: {samples} samples in one call; at most "
                f"{self.request_limits.max_queued_requests} may be queued (max_queued_requests)"
            )
        specs = []
        call = next(self._calls)
        field = request.prompt_field or ("prompt" if request.text is not None else "input_ids")
        for i, (p, sp, r) in enumerate(zip(prompts, params, rids)):
            where = field if single else f"{field}[{i}]"
            ids = self._tokenize(p, where)
            check_prompt(ids, sp, self.limits, where)
            if logprob.enabled and logprob.start_len >= len(ids):
                raise ValueError(
                    f"logprob_start_len: {logprob.start_len} is not below the prompt length {len(ids)}"
                )
            grammar = self._compile(sp)
            for k in range(sp.n):
                rid = r if sp.n == 1 else f"{r}-{k}"
                specs.append(RequestSpec(rid, ids, sp, logprob, k, grammar, call))
        return specs, single

    def single_spec(self, request: GenerateRequest) -> RequestSpec:
        specs, single = self.specs(request)
        if not single or len(specs) != 1:
            raise ValueError("prompt: streaming takes one prompt with n == 1")
        return specs[0]

    def _compile(self, params: SamplingParams) -> CompiledGrammar | None:
        """Compile the request's constraint here, in the caller's thread: the engine loop
        never waits for a compile, and an invalid constraint is a ValueError up front."""
        if params.constraint is None:
            return None
        if self.grammars is None:
            raise ValueError(
                f"{params.constraint.kind}: constrained decoding needs a tokenizer, and this "
                "engine has none"
            )
        check_constraint_size(params.constraint, self.request_limits)
        return self.grammars.compile(params.constraint)

    def _tokenize(self, prompt: str | list[int], where: str) -> list[int]:
        if not isinstance(prompt, str):
            return prompt
        if not prompt:
            raise ValueError(f"{where}: empty prompt")
        if self.tokenizer is None:
            raise ValueError(f"{where}: this engine has no tokenizer; pass token ids (input_ids)")
        if len(prompt) > self.limits.max_prompt_chars:
            raise ValueError(
                f"{where}: {len(prompt)} characters cannot fit in the model's context of "
                f"{self.limits.max_context} tokens"
            )
        return self.tokenizer.encode(prompt)


def make_request(
    spec: RequestSpec,
    stream: bool,
    on_event: Callable[[Event | BaseException], None],
    tokenizer: Any,
    eos_ids: frozenset[int],
    rng: random.Random,
) -> Request:
    """The engine's Request for a prepared spec; `rng` seeds requests that give no seed."""
    params = spec.params
    if params.seed is None:
        seed = rng.getrandbits(63)
    else:  # the n samples of one seeded prompt differ, reproducibly
        seed = (params.seed + spec.sample_index * 0x9E3779B97F4A7C15) % (1 << 63)
    detok = None
    if tokenizer is not None:
        detok = IncrementalDetokenizer(tokenizer, spec.prompt_ids, params.skip_special_tokens)
    return Request(
        rid=spec.rid,
        prompt_ids=spec.prompt_ids,
        params=params,
        eos_ids=eos_ids,
        seed=seed,
        detokenizer=detok,
        on_event=on_event,
        logprob=spec.logprob,
        stream=stream,
        matcher=spec.grammar.matcher() if spec.grammar is not None else None,
        call=spec.call,
    )
