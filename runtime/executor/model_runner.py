"""ModelRunner: one forward pass of a scheduled batch, from token ids to sampled tokens."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..constrained.bitmask import allocate_bitmask
from ..kvcache.kv_pool import KVPool
from ..scheduler.request import Request
from .attention.base import AttentionBackend
from .forward_context import ForwardBatch, forward_scope
from .model_step import ModelStep
from .models.llama import LlamaForCausalLM
from .sampler import Sampler, SamplingRow, TokenMasks

# On CPU, a step's tokens go through the model in forwards of at most this many (a longer
# single item goes alone). The scheduler hands over up to max_prefill_tokens at once, and past
# ~1-2k rows the activations between the matrix products outgrow the caches: on the benchmark
# model (AVX-512 EPYC, float32) 32 prompts of 128 tokens took 4.2 s as one forward and 3.6 s
# as four (the fused elementwise loops 444 ms against 4 x 47, the products 3.57 s against
# 4 x 0.83); per forward 256 tokens ran at 1054 tok/s, 512-1536 at 1134-1148, 2048 at 1084,
# 4096 at 972 (bfloat16: 512-1024 at 2069-2115, 2048 at 2020). Nothing else changes: the
# items of a step never read each other's KV, and the graph is dynamic in the token count.
CPU_FORWARD_TOKENS = 1024


class ScheduledItem(NamedTuple):
    """Request `req` computes fill positions [start, end) this step; `sample` if it then
    picks its next token from the last of them."""

    req: Request
    start: int
    end: int
    sample: bool


class ItemResult(NamedTuple):
    next_id: int | None
    logprob: float | None
    top: list[tuple[float, int]] | None
    # prompt entries completed this step: (logprob, token id) and optional top-k rows
    prompt_logprobs: list[tuple[float, int]]
    prompt_top: list[list[tuple[float, int]]]
    kept_log_mass: float | None = None  # what min-p / top-k / top-p kept (when asked)


class StepOutputs(NamedTuple):
    """What one forward step computed, on the device: the sampled tokens and the logprobs
    asked for. None: nothing of that kind this step."""

    next_ids: torch.Tensor | None = None  # [samplers] int64
    logprobs: torch.Tensor | None = None  # [samplers]
    top_logprobs: torch.Tensor | None = None  # [samplers, k]
    top_ids: torch.Tensor | None = None  # [samplers, k]
    prompt_logprobs: torch.Tensor | None = None  # [prompt rows]
    prompt_top_logprobs: torch.Tensor | None = None  # [prompt rows, k]
    prompt_top_ids: torch.Tensor | None = None  # [prompt rows, k]
    kept_log_mass: torch.Tensor | None = None  # [samplers]


class HostOutputs(NamedTuple):
    """StepOutputs brought to the host as lists, field for field ([] where None)."""

    next_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[float]]
    top_ids: list[list[int]]
    prompt_logprobs: list[float]
    prompt_top_logprobs: list[list[float]]
    prompt_top_ids: list[list[int]]
    kept_log_mass: list[float]


class ModelRunner:
    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_pool: KVPool,
        attention: AttentionBackend,
        device: torch.device,
        enforce_eager: bool = False,
    ) -> None:
        self.model = model
        self.model_step = ModelStep(model, device, enforce_eager)
        self.kv_pool = kv_pool
        self.attention = attention
        self.device = device
        self.sampler = Sampler()
        self.vocab_size = model.config.vocab_size

    @torch.inference_mode()
    def forward(self, items: list[ScheduledItem]) -> list[ItemResult]:
        # Which token rows need logits: prompt-logprob rows first, then one row per sampler.
        prompt_rows: list[int] = []
        prompt_targets: list[int] = []
        prompt_spans: list[tuple[int, int]] = []
        sample_rows: list[int] = []
        sampling: list[SamplingRow] = []
        offset = 0
        for item in items:
            first = len(prompt_rows)
            for pos, target in _prompt_logprob_positions(item):
                prompt_rows.append(offset + pos - item.start)
                prompt_targets.append(target)
            prompt_spans.append((first, len(prompt_rows)))
            if item.sample:
                sample_rows.append(offset + item.end - item.start - 1)
                sampling.append(_sampling_row(item.req))
            offset += item.end - item.start

        wanted = prompt_rows + sample_rows
        kept = sorted(set(wanted))
        hidden = self._hidden_states(items, kept)  # [len(kept), hidden]
        # On a GPU the forward above is still running: the masks are filled meanwhile.
        masks = self._constraint_masks([i.req for i in items if i.sample])
        if wanted != kept:
            where = {row: i for i, row in enumerate(kept)}
            picks = torch.tensor([where[r] for r in wanted], dtype=torch.int64)
            hidden = hidden[picks.to(self.device)]
        logits = self.model.logits(hidden) if wanted else hidden.new_empty((0, 0))
        prompt_logits, sample_logits = logits[: len(prompt_rows)], logits[len(prompt_rows) :]

        top_k = max((i.req.logprob.top_k for i in items if i.req.logprob.enabled), default=0)
        step = StepOutputs()
        if prompt_rows:
            lp = torch.log_softmax(prompt_logits, dim=-1)
            targets = torch.tensor(prompt_targets, device=self.device)
            step = step._replace(prompt_logprobs=lp.gather(1, targets[:, None]).squeeze(1))
            if top_k:
                top_lp, top_ids = lp.topk(top_k, dim=-1)
                step = step._replace(prompt_top_logprobs=top_lp, prompt_top_ids=top_ids)
        if sampling:
            want_lp = any(r.req.logprob.enabled for r in items if r.sample)
            out = self.sampler(sample_logits, sampling, want_lp, top_k, masks)
            step = step._replace(
                next_ids=out.next_ids,
                logprobs=out.logprobs,
                top_logprobs=out.top_logprobs,
                top_ids=out.top_ids,
                kept_log_mass=out.kept_log_mass,
            )
        return self._results(items, _to_host(step), prompt_spans, prompt_targets)

    def _hidden_states(self, items: list[ScheduledItem], kept: list[int]) -> torch.Tensor:
        """The model's output for the token rows `kept` (ascending indices into the step's new
        tokens, in item order). On CPU a step of many prompt tokens runs as several forwards of
        whole items (see CPU_FORWARD_TOKENS)."""
        limit = CPU_FORWARD_TOKENS if self.device.type == "cpu" else None
        parts = []
        start = 0
        for group in split_by_tokens(items, limit):
            end = start + sum(i.end - i.start for i in group)
            rows = [r - start for r in kept if start <= r < end]
            # A prompt chunk that needs no logits still runs (its k/v fill the pool); it keeps
            # its last row, which is then dropped.
            batch = self._build_batch(group)
            batch.keep_rows = rows or [end - start - 1]
            self.attention.prepare(batch)
            with forward_scope(batch):
                keep = torch.tensor(batch.keep_rows, dtype=torch.int64, device=self.device)
                hidden = self.model_step(batch.input_ids, batch.positions, keep)
            if rows:
                parts.append(hidden)
            start = end
        if not parts:
            dtype = self.model.embed_tokens.weight.dtype
            return torch.empty((0, self.model.config.hidden_size), dtype=dtype, device=self.device)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Compile the forward step before serving, on a scratch row of the pool."""
        if not self.model_step.compiled:
            return
        row = self.kv_pool.alloc_row()
        slots = self.kv_pool.alloc(3)
        if row is None or slots is None:  # a pool too small for even this: compile later
            return
        try:
            self.kv_pool.slot_table[row, :3] = slots.to(self.kv_pool.slot_table.device)

            def run(tokens: int) -> None:
                start = 3 - tokens  # 2 tokens at positions 1-2 over a prefix of 1, or 1 at 2
                batch = ForwardBatch(
                    input_ids=torch.zeros(tokens, dtype=torch.int64, device=self.device),
                    positions=torch.arange(start, 3, device=self.device),
                    out_slots=slots[start:].to(self.device),
                    table_rows=[row],
                    prefix_lens=[start],
                    extend_lens=[tokens],
                    seq_lens=[3],
                    slot_table=self.kv_pool.slot_table,
                    kv_pool=self.kv_pool,
                    attention=self.attention,
                )
                self.attention.prepare(batch)
                with forward_scope(batch):
                    keep = torch.arange(tokens, device=self.device)
                    self.model_step(batch.input_ids, batch.positions, keep)

            self.model_step.warm_up(run)
        finally:
            self.kv_pool.free(slots)
            self.kv_pool.free_row(row)

    def _constraint_masks(self, samplers: list[Request]) -> TokenMasks | None:
        """One packed bitmask row per constrained request, for the sampler to apply at once."""
        rows = [i for i, r in enumerate(samplers) if r.matcher is not None]
        if not rows:
            return None
        bitmask = allocate_bitmask(len(rows), self.vocab_size)
        for k, i in enumerate(rows):
            matcher = samplers[i].matcher
            assert matcher is not None
            matcher.fill_bitmask(bitmask, k)
        return TokenMasks(torch.tensor(rows, dtype=torch.int64), bitmask)

    def _build_batch(self, items: list[ScheduledItem]) -> ForwardBatch:
        input_ids: list[int] = []
        positions: list[int] = []
        table = self.kv_pool.slot_table
        rows: list[int] = []
        prefix_lens, extend_lens, seq_lens = [], [], []
        out_slots = []
        for item in items:
            assert item.req.table_row is not None  # scheduled requests hold a row
            input_ids.extend(item.req.fill_slice(item.start, item.end))
            positions.extend(range(item.start, item.end))
            rows.append(item.req.table_row)
            prefix_lens.append(item.start)
            extend_lens.append(item.end - item.start)
            seq_lens.append(item.end)
            out_slots.append(table[item.req.table_row, item.start : item.end])
        device = self.device
        return ForwardBatch(
            input_ids=torch.tensor(input_ids, dtype=torch.int64, device=device),
            positions=torch.tensor(positions, dtype=torch.int64, device=device),
            out_slots=torch.cat(out_slots).to(device),
            table_rows=rows,
            prefix_lens=prefix_lens,
            extend_lens=extend_lens,
            seq_lens=seq_lens,
            slot_table=table,
            kv_pool=self.kv_pool,
            attention=self.attention,
        )

    @staticmethod
    def _results(
        items: list[ScheduledItem],
        host: HostOutputs,
        prompt_spans: list[tuple[int, int]],
        prompt_targets: list[int],
    ) -> list[ItemResult]:
        results = []
        sample_idx = 0
        for item, (first, last) in zip(items, prompt_spans):
            prompt_lp = [(host.prompt_logprobs[j], prompt_targets[j]) for j in range(first, last)]
            prompt_top = []
            k = item.req.logprob.top_k
            if host.prompt_top_logprobs and k:
                prompt_top = [
                    list(zip(host.prompt_top_logprobs[j][:k], host.prompt_top_ids[j][:k]))
                    for j in range(first, last)
                ]
            next_id = lp = top = kept = None
            if item.sample:
                next_id = host.next_ids[sample_idx]
                if host.kept_log_mass:
                    kept = host.kept_log_mass[sample_idx]
                if host.logprobs:
                    lp = host.logprobs[sample_idx]
                if host.top_logprobs and k:
                    top = list(zip(host.top_logprobs[sample_idx][:k], host.top_ids[sample_idx][:k]))
                sample_idx += 1
            results.append(ItemResult(next_id, lp, top, prompt_lp, prompt_top, kept))
        return results


def split_by_tokens(items: list[ScheduledItem], limit: int | None) -> list[list[ScheduledItem]]:
    """Consecutive groups of whole items of at most `limit` new tokens each (an item over
    the limit alone); one group when `limit` is None."""
    if limit is None:
        return [items]
    groups: list[list[ScheduledItem]] = [[]]
    tokens = 0
    for item in items:
        n = item.end - item.start
        if groups[-1] and tokens + n > limit:
            groups.append([])
            tokens = 0
        groups[-1].append(item)
        tokens += n
    return groups


def _prompt_logprob_positions(item: ScheduledItem) -> list[tuple[int, int]]:
    """(position whose logits score the next prompt token, that token) for this extend.

    Entry k of a request's input logprobs scores prompt token start_len + k from the logits
    at position start_len + k - 1 (entry 0 has none). Only entries not yet filled count, so
    a request recomputed after preemption does not score its prompt twice.
    """
    req = item.req
    if not req.wants_prompt_logprobs:
        return []
    prompt = req.prompt_ids
    begin = req.logprob.start_len
    next_entry = max(len(req.input_logprobs), 1)
    first_pos = max(item.start, begin + next_entry - 1)
    last_pos = min(item.end, len(prompt) - 1)  # the last prompt token scores nothing in it
    return [(pos, prompt[pos + 1]) for pos in range(first_pos, last_pos)]


def _sampling_row(req: Request) -> SamplingRow:
    params = req.params
    suppressed: frozenset[int] = frozenset()
    if len(req.output_ids) < params.min_new_tokens:
        suppressed = params.stop_id_set | (frozenset() if params.ignore_eos else req.eos_ids)
    return SamplingRow(params, req.seed, req.prompt_ids, req.output_ids, suppressed)


def _to_host(step: StepOutputs) -> HostOutputs:
    """Bring every result to the host, as lists, with one synchronisation for the step."""
    present = [t for t in step if t is not None]
    if present and present[0].device.type == "cuda":
        device = present[0].device
        step = StepOutputs(*(None if t is None else t.to("cpu", non_blocking=True) for t in step))
        torch.cuda.current_stream(device).synchronize()
    return HostOutputs(*([] if t is None else t.tolist() for t in step))
