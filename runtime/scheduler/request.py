"""Request: everything one generation owns, from arrival to finish."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from ..constrained.matcher import Matcher
from ..kvcache.prefix_cache import PrefixMatch
from ..sampling.sampling_params import SamplingParams
from .detokenizer import IncrementalDetokenizer

if TYPE_CHECKING:  # (outputs are built from requests: a runtime import would be a cycle)
    from ..engine.outputs import Event


class RequestStatus(enum.IntEnum):
    """Ordered: everything at or above FINISHED_STOP is final."""

    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOP = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORT = 5

    @property
    def finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOP

    @classmethod
    def ending(cls, reason: FinishReason) -> RequestStatus:
        """The final status a finish reason puts a request in."""
        return _FINAL_STATUS[reason.type]


class FinishReason(NamedTuple):
    """Why a request ended, in SGLang's shape (see `to_dict`)."""

    type: str  # "stop" | "length" | "abort"
    matched: str | int | None = None
    length: int | None = None
    message: str | None = None
    # An abort that is an error: 400 when the request caused it, 500 for an internal fault
    # (a server answers with this status); None for aborts asked for (a client, shutdown).
    status_code: int | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.type == "stop":
            return {"type": "stop", "matched": self.matched}
        if self.type == "length":
            return {"type": "length", "length": self.length}
        err_type = None
        if self.status_code is not None:
            err_type = "BadRequestError" if self.status_code < 500 else "InternalServerError"
        return {
            "type": "abort",
            "message": self.message,
            "status_code": self.status_code,
            "err_type": err_type,
        }


_FINAL_STATUS = {
    "stop": RequestStatus.FINISHED_STOP,
    "length": RequestStatus.FINISHED_LENGTH,
    "abort": RequestStatus.FINISHED_ABORT,
}


def internal_error(exc: BaseException) -> FinishReason:
    """The finish reason of a request that an internal fault ended (HTTP 500)."""
    return FinishReason(
        "abort", message=f"internal error: {type(exc).__name__}: {exc}", status_code=500
    )


# [logprob or None, token id, token text or None], as SGLang lays out logprob entries.
LogprobEntry = list


@dataclass(slots=True)
class LogprobRequest:
    """What logprobs a request asked for."""

    enabled: bool = False
    start_len: int = -1  # first prompt position to score; -1: none (output only)
    top_k: int = 0
    with_text: bool = False


@dataclass(slots=True, eq=False)  # identity: two requests are never "equal"
class Request:
    rid: str
    prompt_ids: list[int]
    params: SamplingParams
    eos_ids: frozenset[int]
    seed: int
    detokenizer: IncrementalDetokenizer | None
    on_event: Callable[[Event | BaseException], None]  # the consumer's events (or the error)
    logprob: LogprobRequest = field(default_factory=LogprobRequest)
    stream: bool = False
    matcher: Matcher | None = None  # the constraint's state, when the params carry one
    call: int = 0  # the call it came with (its siblings: n samples, a batch's prompts)
    output_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    # KV bookkeeping: `table_row` is this request's row in the pool's slot table, and the
    # first `num_computed` tokens of prompt + output have their KV there. The first
    # `prefix.length` of those slots belong to the prefix cache (locked while we run); the
    # rest are ours until handed to the cache.
    table_row: int | None = None
    num_computed: int = 0
    prefix: PrefixMatch | None = None
    # Slots taken for this request's coming decode tokens, in order (see DECODE_RUN).
    spare_slots: list[int] = field(default_factory=list)
    # False once the weights change while it holds KV: that KV must not reach the cache
    cacheable: bool = True
    cached_tokens: int = 0  # prompt tokens taken from the cache when first scheduled
    num_preemptions: int = 0
    enqueued_step: int = 0  # the scheduler step at which it last joined the waiting queue
    # logprobs, filled as they are computed
    input_logprobs: list[LogprobEntry] = field(default_factory=list)
    output_logprobs: list[LogprobEntry] = field(default_factory=list)
    input_top_logprobs: list[list[LogprobEntry] | None] = field(default_factory=list)
    output_top_logprobs: list[list[LogprobEntry]] = field(default_factory=list)
    output_kept_log_mass: list[float | None] = field(default_factory=list)  # when asked
    text: str = ""
    detokenized_ids: int = 0  # output tokens already fed to the detokenizer
    stop_checked_chars: int = 0  # text already searched for stop strings
    stop_state: int = 0  # the stop-string automaton's state after that text
    streamed_chars: int = 0
    streamed_ids: int = 0
    streamed_prompt_logprobs: bool = False
    arrival_time: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    last_token_time: float | None = None
    finish_time: float | None = None

    def fill_slice(self, start: int, end: int) -> list[int]:
        """(prompt + output)[start:end] without building the whole list: the "fill" is every
        token whose KV the request needs, and decode reads one of them per step."""
        n = len(self.prompt_ids)
        if start >= n:
            return self.output_ids[start - n : end - n]
        if end <= n:
            return self.prompt_ids[start:end]
        return self.prompt_ids[start:] + self.output_ids[: end - n]

    def reusable_tokens(self) -> list[int]:
        """The longest prefix of the fill whose KV may come from a cache: all but the last
        token (whose logits are needed), and nothing at or after the first position whose
        logits still have a prompt logprob to score."""
        limit = self.seq_len - 1
        lp = self.logprob
        if (
            self.wants_prompt_logprobs
            and len(self.input_logprobs) < len(self.prompt_ids) - lp.start_len
        ):
            limit = min(limit, lp.start_len + max(len(self.input_logprobs), 1) - 1)
        return self.fill_slice(0, limit)

    @property
    def seq_len(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.logprob.enabled and 0 <= self.logprob.start_len < len(self.prompt_ids)

    def finish(self, reason: FinishReason) -> None:
        """End the request: its status follows from the reason. (Its KV is the
        scheduler's to release.)"""
        self.status = RequestStatus.ending(reason)
        self.finish_reason = reason
        self.finish_time = time.perf_counter()
