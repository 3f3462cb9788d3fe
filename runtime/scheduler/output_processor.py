"""After each step: append sampled tokens, update text, and decide which requests are done.

The output side owns a request's outputs: its tokens, text, logprobs and finish reason
(written here) and the events its consumer receives (events.py). KV bookkeeping
(`num_computed`, slots) is the scheduler's (request_kv.py).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from ..constrained.jump_forward import jump_forward
from ..executor.model_runner import ItemResult, ScheduledItem
from .request import FinishReason, LogprobEntry, Request


class TokenTimings(Protocol):
    """Receives each request's token timings as they happen (the server's metrics)."""

    def first_token(self, seconds: float) -> None: ...

    def inter_token(self, seconds: float) -> None: ...


class OutputProcessor:
    def __init__(
        self,
        max_context: int,
        tokenizer: Any,
        jump_forward: bool = False,
    ) -> None:
        self.max_context = max_context
        self.tokenizer = tokenizer
        # Each token's text on its own, decoded once: logprob entries name up to
        # top_logprobs_num tokens per request per step, on the engine thread.
        self._token_text: dict[int, str] = {}
        self.jump_forward = jump_forward
        self.jump_forward_tokens = 0  # tokens appended without sampling
        self.timings: list[TokenTimings] = []
        # The weights' version when a request finishes goes in its output (weight updates
        # set it on the engine thread, between steps).
        self.weight_version = "default"

    def apply(self, item: ScheduledItem, res: ItemResult) -> None:
        """Record one item's results in its request; finishes it when a stop rule fires."""
        req = item.req
        self._record_prompt_logprobs(req, res)
        if not item.sample:
            if req.params.max_new_tokens == 0 and item.end == req.seq_len:
                req.finish(FinishReason("length", length=0))
            return
        assert res.next_id is not None  # a sampling item got a token
        token = res.next_id
        req.output_ids.append(token)
        self._note_time(req)
        if req.params.return_kept_mass:
            req.output_kept_log_mass.append(res.kept_log_mass)
        if req.logprob.enabled:
            req.output_logprobs.append([res.logprob, token, self._text_of(req, token)])
            if req.logprob.top_k:
                req.output_top_logprobs.append(self._entries(req, res.top or []))
        if req.matcher is not None and not self._advance_matcher(req, token):
            return
        self._check_finish(req, req.output_ids[-1])

    def _note_time(self, req: Request) -> None:
        now = time.perf_counter()
        if req.first_token_time is None:
            req.first_token_time = now
            for t in self.timings:
                t.first_token(now - req.arrival_time)
        elif self.timings and req.last_token_time is not None:
            for t in self.timings:
                t.inter_token(now - req.last_token_time)
        req.last_token_time = now

    def _advance_matcher(self, req: Request, token: int) -> bool:
        """Feed the sampled token to the request's constraint, then append any forced
        continuation (jump-forward). False when this finished the request."""
        matcher = req.matcher
        assert matcher is not None
        if not matcher.consume(token) or matcher.error:
            message = f"constraint: {matcher.error or f'token {token} was rejected'}"
            req.finish(FinishReason("abort", message=message))
            return False
        if token in req.eos_ids or token in req.params.stop_id_set:
            return True  # the usual stop rules end it
        finished = matcher.finished
        if not finished and self._may_jump(req):
            room = min(
                req.params.max_new_tokens - len(req.output_ids), self.max_context - req.seq_len
            )
            jump = jump_forward(matcher, token, room)
            if jump is not None:
                if jump.replace_last is not None:
                    req.output_ids[-1] = jump.replace_last
                req.output_ids.extend(jump.tokens)
                self.jump_forward_tokens += len(jump.tokens)
                finished = matcher.finished
        if finished:
            # Nothing but EOS may follow: the document is complete.
            req.finish(FinishReason("stop", matched=None))
            return False
        return True

    def _may_jump(self, req: Request) -> bool:
        # Forced tokens are not sampled, so they have no logprobs of their own to report:
        # requests that return logprobs sample every token.
        return self.jump_forward and not req.logprob.enabled

    def _check_finish(self, req: Request, token: int) -> None:
        params = req.params
        produced = len(req.output_ids)
        may_stop = produced >= params.min_new_tokens
        if may_stop and token in params.stop_id_set:
            return req.finish(FinishReason("stop", matched=token))
        if may_stop and not params.ignore_eos and token in req.eos_ids:
            return req.finish(FinishReason("stop", matched=token))
        if params.stop or req.stream:
            self._advance_text(req)
            if params.stop and self._match_stop_string(req, may_stop):
                return
        if produced >= params.max_new_tokens or req.seq_len >= self.max_context:
            return req.finish(FinishReason("length", length=produced))

    def finalize_text(self, req: Request) -> None:
        """Decode whatever output the request's text does not cover yet (it has ended)."""
        self._advance_text(req, final=True)

    def _advance_text(self, req: Request, final: bool = False) -> None:
        if req.detokenizer is None:
            return
        new_ids = req.output_ids[req.detokenized_ids :]
        req.detokenized_ids = len(req.output_ids)
        req.text += req.detokenizer.flush(new_ids) if final else req.detokenizer.step(new_ids)

    def _match_stop_string(self, req: Request, may_stop: bool) -> bool:
        """Read the text new since the last step for stop strings; finish the request at
        the first one (once min_new_tokens allows: earlier ones are read past)."""
        automaton = req.params.stop_strings
        text = req.text
        state, pos = req.stop_state, req.stop_checked_chars
        while True:
            state, found = automaton.scan(state, text, pos)
            if found is None or may_stop:
                break
            pos = found.end
        req.stop_state, req.stop_checked_chars = state, len(text)
        if found is None:
            return False
        req.text = text[: found.end] if req.params.no_stop_trim else text[: found.start]
        req.finish(FinishReason("stop", matched=found.string))
        return True

    @staticmethod
    def held_back(req: Request) -> int:
        """Characters at the end of the text that may yet begin a stop string: a stream
        must not send them until the next tokens decide."""
        return req.params.stop_strings.depth[req.stop_state] if req.params.stop else 0

    def _record_prompt_logprobs(self, req: Request, res: ItemResult) -> None:
        if not req.wants_prompt_logprobs:
            return
        with_top = req.logprob.top_k > 0
        if not req.input_logprobs:  # entry 0 scores nothing (SGLang's null first entry)
            first = req.prompt_ids[req.logprob.start_len]
            req.input_logprobs.append([None, first, self._text_of(req, first)])
            if with_top:
                req.input_top_logprobs.append(None)
        tops: list[list[tuple[float, int]] | None] = [None] * len(res.prompt_logprobs)
        if res.prompt_top:
            tops = list(res.prompt_top)
        for (lp, token), top in zip(res.prompt_logprobs, tops):
            req.input_logprobs.append([lp, token, self._text_of(req, token)])
            if with_top:
                req.input_top_logprobs.append(self._entries(req, top or []))

    def _entries(self, req: Request, pairs: list[tuple[float, int]]) -> list[LogprobEntry]:
        return [[lp, t, self._text_of(req, t)] for lp, t in pairs]

    def _text_of(self, req: Request, token: int) -> str | None:
        if not req.logprob.with_text or self.tokenizer is None:
            return None
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = self.tokenizer.decode([token])
        return text
