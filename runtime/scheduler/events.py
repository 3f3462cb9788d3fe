"""What a request's consumer receives after a step: stream chunks, then the final output.

Built on the output side, from what the output processor wrote: a stream gets the text and
tokens new since its last chunk (never text that may still turn out to be a stop string),
and every request gets its GenerateOutput when it finishes (in the last chunk, if it
streams).
"""

from __future__ import annotations

import logging

from ..engine.outputs import Event, GenerateOutput, StreamChunk
from .output_processor import OutputProcessor
from .request import Request, internal_error

logger = logging.getLogger("loomlm.engine")


def next_event(req: Request, outputs: OutputProcessor) -> Event | None:
    """The event `req` has to report now, or None (nothing new, or not a stream). May raise
    (the text could not be decoded); the caller then ends the request with the error."""
    if req.status.finished:
        return _final(req, outputs)
    if not req.stream:
        return None
    text_end = max(req.streamed_chars, len(req.text) - outputs.held_back(req))
    if text_end == req.streamed_chars and len(req.output_ids) == req.streamed_ids:
        return None  # nothing new (a prefill chunk, or text held back)
    return _chunk(req, text_end, None)


def _final(req: Request, outputs: OutputProcessor) -> Event:
    try:
        outputs.finalize_text(req)
    except Exception as exc:  # the request has ended; its text could not be completed
        logger.exception("request %s: its text could not be decoded", req.rid)
        req.finish(internal_error(exc))
    output = GenerateOutput.of(req, outputs.weight_version)
    return _chunk(req, len(req.text), output) if req.stream else output


def _chunk(req: Request, text_end: int, output: GenerateOutput | None) -> StreamChunk:
    text = req.text[req.streamed_chars : text_end]
    first, end = req.streamed_ids, len(req.output_ids)
    req.streamed_chars, req.streamed_ids = text_end, end
    reason = output.finish_reason if output is not None else None
    lp = req.logprob
    if not lp.enabled:
        return StreamChunk(
            req.rid, text, req.output_ids[first:end], reason, output, req.cached_tokens
        )
    top = lp.top_k > 0
    # The first chunk comes once a token is sampled (or the request ended), when the
    # prompt's logprobs are all computed.
    prompt_part = not req.streamed_prompt_logprobs
    req.streamed_prompt_logprobs = True
    return StreamChunk(
        req.rid,
        text,
        req.output_ids[first:end],
        reason,
        output,
        req.cached_tokens,
        req.output_logprobs[first:end],
        req.output_top_logprobs[first:end] if top else None,
        list(req.input_logprobs) if prompt_part else None,
        list(req.input_top_logprobs) if prompt_part and top else None,
    )
