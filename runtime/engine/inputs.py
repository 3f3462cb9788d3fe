"""Turning a call (a GenerateRequest) into validated request specs, and a spec into the
engine's Request.

All validation happens here and in input_checks.py, in the caller's thread, so that bad
input raises a ValueError naming the field before anything reaches the engine loop.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any, NamedTuple

from ..constrained.constraint_limits import check_constraint_size
from ..constrained.grammar_compiler import GrammarCompiler
from ..constrained.matcher import CompiledGrammar
from ..sampling.generate_request import GenerateRequest
from ..sampling.sampling_params import SamplingParams
from ..scheduler.detokenizer import IncrementalDetokenizer
from ..scheduler.request import LogprobRequest, Request
from .input_checks import (
    Limits,
    check_params,
    check_prompt,
    make_logprob_request,
    make_rids,
    normalize_params,
    normalize_prompts,
)
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
