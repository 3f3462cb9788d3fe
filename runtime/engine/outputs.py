"""What the engine hands back: finished results and streaming chunks."""

from __future__ import annotations

from typing import Any, NamedTuple

from ..scheduler.request import FinishReason, Request


class GenerateOutput(NamedTuple):
    """The result of one request. `to_dict()` gives SGLang's /generate response shape."""

    rid: str
    text: str
    output_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    input_token_logprobs: list[list] | None
    output_token_logprobs: list[list] | None
    input_top_logprobs: list[list[list] | None] | None
    output_top_logprobs: list[list[list]] | None
    e2e_latency: float
    num_preemptions: int
    # The version of the weights when the request finished (engine.get_weight_version): an
    # update while it ran means its earlier tokens came from the version before.
    weight_version: str = "default"
    # per output token, the log of the probability mass min-p / top-k / top-p kept
    # (sampling params return_kept_mass); None when not asked
    output_kept_log_mass: list[float | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "id": self.rid,
            "finish_reason": self.finish_reason.to_dict(),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "e2e_latency": self.e2e_latency,
            "weight_version": self.weight_version,
        }
        if self.output_kept_log_mass is not None:
            meta["output_token_kept_log_mass"] = self.output_kept_log_mass
        if self.output_token_logprobs is not None:
            meta["input_token_logprobs"] = self.input_token_logprobs
            meta["output_token_logprobs"] = self.output_token_logprobs
            meta["output_token_logprobs_length"] = len(self.output_token_logprobs)
            if self.output_top_logprobs is not None:
                meta["input_top_logprobs"] = self.input_top_logprobs
                meta["output_top_logprobs"] = self.output_top_logprobs
        return {"text": self.text, "output_ids": self.output_ids, "meta_info": meta}

    @classmethod
    def of(cls, req: Request, weight_version: str = "default") -> GenerateOutput:
        lp = req.logprob
        end = req.finish_time if req.finish_time is not None else req.arrival_time
        return cls(
            rid=req.rid,
            text=req.text,
            output_ids=list(req.output_ids),
            finish_reason=req.finish_reason or FinishReason("abort", message="unfinished"),
            prompt_tokens=len(req.prompt_ids),
            completion_tokens=len(req.output_ids),
            cached_tokens=req.cached_tokens,
            input_token_logprobs=list(req.input_logprobs) if lp.enabled else None,
            output_token_logprobs=list(req.output_logprobs) if lp.enabled else None,
            input_top_logprobs=list(req.input_top_logprobs) if lp.enabled and lp.top_k else None,
            output_top_logprobs=list(req.output_top_logprobs) if lp.enabled and lp.top_k else None,
            e2e_latency=end - req.arrival_time,
            num_preemptions=req.num_preemptions,
            weight_version=weight_version,
            output_kept_log_mass=(
                list(req.output_kept_log_mass) if req.params.return_kept_mass else None
            ),
        )


class StreamChunk(NamedTuple):
    """A piece of a streamed request: the text and token ids new since the previous chunk.

    Logprob entries are likewise those of the new tokens; the prompt's come with the first
    chunk. The last chunk of a request has `finish_reason` set and carries the whole result
    in `output`.
    """

    rid: str
    text: str
    token_ids: list[int]
    finish_reason: FinishReason | None = None
    output: GenerateOutput | None = None
    cached_tokens: int = 0
    output_logprobs: list[list] | None = None
    output_top_logprobs: list[list[list]] | None = None
    input_logprobs: list[list] | None = None
    input_top_logprobs: list[list[list] | None] | None = None


# What a request's consumer receives (see scheduler/events.py).
Event = StreamChunk | GenerateOutput
