"""Sampler: next tokens for a whole batch in a handful of tensor operations.

Randomness is counter-based: the uniform number that picks request r's k-th token is a hash
of (r's seed, k). A seeded request therefore draws the same numbers whatever else shares its
batch, and a request that is preempted and recomputed resumes the same random stream.
Sampling uses the inverse CDF, so one uniform per request per step is all it needs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..constrained.bitmask import apply_token_bitmask_
from ..sampling.sampling_params import SamplingParams

_MASK64 = (1 << 64) - 1


def uniform_from(seed: int, counter: int) -> float:
    """A uniform in [0, 1) from (seed, counter): splitmix64 over the pair."""
    z = (seed * 0x9E3779B97F4A7C15 + counter * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return (z >> 11) / float(1 << 53)


class SamplingRow(NamedTuple):
    """What the sampler needs of one request this step."""

    params: SamplingParams
    seed: int
    prompt_ids: list[int]
    output_ids: list[int]
    suppressed_ids: frozenset[int]  # EOS and stop ids while min_new_tokens is not reached


class TokenMasks(NamedTuple):
    """Constraint masks of some of the batch's rows."""

    rows: torch.Tensor  # [R] int64: which rows of the sampler's batch
    bitmask: torch.Tensor  # [R, words] int32, packed (constrained.bitmask)


class SamplerOutput(NamedTuple):
    next_ids: torch.Tensor  # [B] int64
    logprobs: torch.Tensor | None  # [B] float32: logprob of each chosen token (row's mode)
    top_logprobs: torch.Tensor | None  # [B, K] float32
    top_ids: torch.Tensor | None  # [B, K] int64
    # [B] float32: log of the probability mass min-p / top-k / top-p kept (0: nothing cut)
    kept_log_mass: torch.Tensor | None = None


class Sampler:
    def __call__(
        self,
        logits: torch.Tensor,
        rows: list[SamplingRow],
        want_logprobs: bool,
        top_k_logprobs: int,
        masks: TokenMasks | None = None,
    ) -> SamplerOutput:
        # logits: [B, V] float32
        raw_input = logits
        logprobs = top_lp = top_ids = None
        processed = want_logprobs and any(r.params.logprobs_mode == "processed" for r in rows)
        want_kept = any(r.params.return_kept_mass for r in rows)
        if want_logprobs:
            # "raw" logprobs are the model's own distribution, before temperature and
            # penalties; "processed" ones are under the distribution sampled from.
            raw = torch.log_softmax(logits, dim=-1)
        logits = self._apply_penalties(logits, rows)
        logits = self._bias(logits, rows)
        logits = self._suppress(logits, rows)
        if masks is not None:
            if logits.data_ptr() == raw_input.data_ptr():
                logits = logits.clone()  # the caller's logits are not ours to change
            apply_token_bitmask_(logits, masks.bitmask, masks.rows.to(logits.device))
        greedy = [r.params.is_greedy for r in rows]
        kept = None  # [B, V] what sampling kept of each row's tempered softmax
        if all(greedy):
            next_ids = logits.argmax(dim=-1)
        else:
            next_ids, kept = self._sample(logits, rows, processed or want_kept)
            if any(greedy):
                mask = torch.tensor(greedy, device=logits.device)
                next_ids = torch.where(mask, logits.argmax(dim=-1), next_ids)
        kept_log_mass = None
        if want_kept:
            kept_log_mass = torch.zeros(len(rows), device=logits.device)
            if kept is not None:  # greedy rows keep everything: 0
                sampled = ~torch.tensor(greedy, device=logits.device)
                kept_log_mass = torch.where(sampled, kept.sum(-1).log(), kept_log_mass)
        if want_logprobs:
            table = raw
            if processed:
                table = self._processed_logprobs(raw, logits, kept, rows, greedy)
            logprobs = table.gather(1, next_ids[:, None]).squeeze(1)
            if top_k_logprobs > 0:
                top_lp, top_ids = table.topk(top_k_logprobs, dim=-1)
        return SamplerOutput(next_ids, logprobs, top_lp, top_ids, kept_log_mass)

    @staticmethod
    def _processed_logprobs(
        raw: torch.Tensor,
        logits: torch.Tensor,
        kept: torch.Tensor | None,
        rows: list[SamplingRow],
        greedy: list[bool],
    ) -> torch.Tensor:
        """Each row's log-distribution in its mode: raw rows as they are; processed greedy
        rows the softmax of the processed logits; processed sampled rows what sampling kept,
        renormalised (-inf where it cut)."""
        device = raw.device
        table = torch.log_softmax(logits, dim=-1)
        if kept is not None:
            sampled = ~torch.tensor(greedy, device=device)
            drawn = (kept / kept.sum(-1, keepdim=True)).log()
            table = torch.where(sampled[:, None], drawn, table)
        mode = torch.tensor([r.params.logprobs_mode == "processed" for r in rows], device=device)
        return torch.where(mode[:, None], table, raw)

    @staticmethod
    def _apply_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        if not any(r.params.has_penalties for r in rows):
            return logits
        device, (batch, vocab) = logits.device, logits.shape
        out_counts = _counts([r.output_ids for r in rows], batch, vocab, device)
        freq = torch.tensor([r.params.frequency_penalty for r in rows], device=device)
        pres = torch.tensor([r.params.presence_penalty for r in rows], device=device)
        rep_values = [r.params.repetition_penalty for r in rows]
        logits = logits - freq[:, None] * out_counts - pres[:, None] * (out_counts > 0)
        if any(v != 1.0 for v in rep_values):  # decided on the host: no device sync
            rep = torch.tensor(rep_values, device=device)
            # Repetition penalty (as in transformers and vLLM) covers prompt and output tokens.
            seen = _counts([r.prompt_ids + r.output_ids for r in rows], batch, vocab, device) > 0
            penalised = torch.where(logits > 0, logits / rep[:, None], logits * rep[:, None])
            logits = torch.where(seen, penalised, logits)
        return logits

    @staticmethod
    def _bias(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """logit_bias: added after the penalties and before temperature, as vLLM and OpenAI
        apply it (so "processed" logprobs see it and "raw" ones do not)."""
        entries = [
            (i, t, b) for i, r in enumerate(rows) for t, b in (r.params.logit_bias or {}).items()
        ]
        if not entries:
            return logits
        rows_idx, tokens, biases = zip(*entries)
        logits = logits.clone()
        bias = torch.tensor(biases, dtype=logits.dtype, device=logits.device)
        logits.index_put_((torch.tensor(rows_idx), torch.tensor(tokens)), bias, accumulate=True)
        return logits

    @staticmethod
    def _suppress(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        pairs = [
            (i, t) for i, r in enumerate(rows) for t in r.suppressed_ids if t < logits.shape[1]
        ]
        if not pairs:
            return logits
        logits = logits.clone()
        row_idx, tok_idx = zip(*pairs)
        logits[list(row_idx), list(tok_idx)] = float("-inf")
        return logits

    @staticmethod
    def _sample(
        logits: torch.Tensor, rows: list[SamplingRow], want_kept: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sampled ids, and (`want_kept`) what sampling kept of each row's tempered softmax,
        [B, V] in vocabulary order: the probabilities min-p, top-k and top-p left, the rest 0."""
        device = logits.device
        temps = torch.tensor([max(r.params.temperature, 1e-6) for r in rows], device=device)
        probs = torch.softmax(logits / temps[:, None], dim=-1)
        min_p = [r.params.min_p for r in rows]
        if any(m > 0 for m in min_p):
            threshold = torch.tensor(min_p, device=device)[:, None] * probs.amax(-1, keepdim=True)
            probs = torch.where(probs < threshold, 0.0, probs)
        uniforms = torch.tensor(
            [uniform_from(r.seed, len(r.output_ids)) for r in rows],
            dtype=torch.float32,
            device=device,
        )
        needs_sort = any(r.params.top_k > 0 or r.params.top_p < 1.0 for r in rows)
        if not needs_sort:
            return _inverse_cdf(probs, uniforms), probs if want_kept else None
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        vocab = probs.shape[1]
        top_k = torch.tensor(
            [r.params.top_k if r.params.top_k > 0 else vocab for r in rows], device=device
        )
        top_p = torch.tensor([r.params.top_p for r in rows], device=device)
        rank = torch.arange(vocab, device=device)[None, :]
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass strictly ahead of each token
        drop = (rank >= top_k[:, None]) | (
            before > top_p[:, None] * sorted_probs.sum(-1, keepdim=True)
        )
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        picked = _inverse_cdf(sorted_probs, uniforms)
        ids = order.gather(1, picked[:, None]).squeeze(1)
        if not want_kept:
            return ids, None
        return ids, torch.zeros_like(probs).scatter_(1, order, sorted_probs)


def _inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    cdf = probs.cumsum(dim=-1)
    targets = uniforms[:, None] * cdf[:, -1:]
    picked = torch.searchsorted(cdf, targets, right=True).squeeze(1)
    return picked.clamp_(max=probs.shape[1] - 1)


def _counts(seqs: list[list[int]], batch: int, vocab: int, device: torch.device) -> torch.Tensor:
    counts = torch.zeros((batch, vocab), dtype=torch.float32, device=device)
    longest = max((len(s) for s in seqs), default=0)
    if longest == 0:
        return counts
    ids = torch.full((batch, longest), vocab, dtype=torch.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.int64)
    padded = torch.zeros((batch, vocab + 1), dtype=torch.float32)
    padded.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.float32))
    return padded[:, :vocab].to(device)
