"""Engine: the offline API. Load a model once, then generate for many callers at once.

Example::

    from loomlm.runtime import Engine, SamplingParams

    with Engine() as engine:  # the built-in TinyStories 260K model
        out = engine.generate("Once upon a time", SamplingParams(max_new_tokens=32, temperature=0))
        print(out.text, out.finish_reason)
        for chunk in engine.stream("One day", {"max_new_tokens": 16}):
            print(chunk.text, end="", flush=True)
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from .attention.torch_backend import TorchAttention
from .constrained import bitmask
from .constrained.grammar_compiler import GrammarCompiler
from .constrained.json_format import JsonFormat
from .engine_inputs import (
    Limits,
    ParamsInput,
    RequestSpec,
    SpecBuilder,
    make_request,
    prompt_chars_bound,
)
from .engine_loop import ArrivalWait, EngineLoop, Event, raise_if_error
from .engine_stats import read_stats
from .kv_budget import kv_slots_for
from .kv_pool import KVPool
from .model_runner import ModelRunner
from .models.config import ModelConfig
from .models.loader import load_model, resolve_dtype, resolve_model_dir
from .output_processor import OutputProcessor, TokenTimings
from .outputs import GenerateOutput, StreamChunk
from .prefix_cache import NoPrefixCache
from .radix_cache import RadixCache
from .request_limits import RequestLimits
from .scheduler import Scheduler, SchedulerConfig
from .tokenizer import load_tokenizer

logger = logging.getLogger("loomlm.engine")

# Prompt tokens per step while requests decode (chunked prefill), by device. A CPU's matmuls
# are compute-bound from a few rows on, so each chunk row slows the decoders' step: on the
# benchmark model the decoders' p99 inter-token latency while a long prompt is prefilled was
# ~2.5x their undisturbed median with 64, ~2x with 32, which however doubles that prompt's
# time to first token and halves how many short prompts join a busy engine per step. A GPU
# computes thousands of rows in the time it takes to read the weights once.
CHUNKED_PREFILL_SIZE = {"cpu": 64, "cuda": 2048}
# Starting from an empty batch, how long to wait for the rest of a burst (see ArrivalWait):
# a small share of one step's time on each device.
ARRIVAL_WAIT = {"cpu": ArrivalWait(0.003, 0.03), "cuda": ArrivalWait(0.0005, 0.005)}


class Engine:
    """An in-process inference engine with continuous batching over a paged KV pool.

    Args:
        model: a checkpoint directory (config.json + safetensors), a hub id where a hub is
            reachable, or None for the built-in TinyStories 260K model.
        dtype: "auto" (the checkpoint's), "float32", "bfloat16" or "float16".
        device: "cpu", "cuda", ...; default: CUDA when available.
        max_total_tokens: KV pool size in tokens; default: `mem_fraction` of free memory.
        mem_fraction: share of free (host or device) memory the KV pool may take.
        max_running_requests: most requests decoding at once.
        max_prefill_tokens: per-step token budget for prompt tokens.
        chunked_prefill_size: largest piece of a prompt computed in one step; longer prompts
            are split across steps and mixed with the running decodes (Sarathi-Serve), which
            then never stall for a whole long prompt. None: by device (64 on CPU, 2048 on
            GPU); -1 turns chunking off. Steps without decodes are never cut.
        schedule_policy: the order of waiting requests: "lpm" (longest cached prefix first),
            "dfs-weight" (SGLang's radix-tree walk) or "fcfs" (arrival order).
        disable_radix_cache: compute every prompt in full and keep no KV after a request.
        context_length: override the model's maximum context.
        tokenizer: a tokenizer directory (default: the model's); `skip_tokenizer_init=True`
            runs on token ids only.
        grammar_backend: compiles `regex` / `json_schema` / `ebnf` / `choices` constraints:
            "auto" (the measured best per kind, see constrained.grammar_compiler),
            "llguidance", "outlines" (regular languages only) or "xgrammar" (if installed).
        disable_jump_forward: sample forced text token by token instead of appending it.
        json_format: separators and bounded whitespace of generated JSON (JsonFormat).
        grammar_compile_timeout: seconds a constraint may take to compile before the
            request is refused.
        grammar_cache_bytes: the compiled-grammar cache's budget (an estimate per grammar,
            see constrained.grammar_compiler); the least recently used go first.
        seed: seeds the random streams of requests that give no seed of their own.
        limits: what one request may ask for and how many may be in flight (RequestLimits:
            n, top logprobs, stop strings, constraint sizes, the queue).

    Errors: bad input raises ValueError naming the field; a call that would pass
    `limits.max_queued_requests` raises EngineOverloadedError; if the engine thread ever
    dies, calls in flight and later ones raise EngineDeadError.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device | None = None,
        max_total_tokens: int | None = None,
        mem_fraction: float | None = None,
        max_running_requests: int = 256,
        max_prefill_tokens: int = 8192,
        chunked_prefill_size: int | None = None,
        schedule_policy: str = "lpm",
        disable_radix_cache: bool = False,
        context_length: int | None = None,
        tokenizer: str | Path | None = None,
        skip_tokenizer_init: bool = False,
        grammar_backend: str = "auto",
        disable_jump_forward: bool = False,
        json_format: JsonFormat | None = None,
        grammar_compile_timeout: float = 10.0,
        grammar_cache_bytes: int = 256 << 20,
        seed: int = 0,
        limits: RequestLimits | None = None,
    ) -> None:
        self.model_dir = resolve_model_dir(model)
        self.model_config = ModelConfig.from_dir(self.model_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = resolve_dtype(dtype, self.model_config)
        config = self.model_config
        self.max_context = context_length or config.max_position_embeddings
        if self.max_context < 2:
            raise ValueError(f"context_length: must be >= 2, got {self.max_context}")
        if self.max_context > config.max_position_embeddings:
            config.max_position_embeddings = self.max_context  # rope tables must cover it
        self.tokenizer = (
            None if skip_tokenizer_init else load_tokenizer(tokenizer or self.model_dir)
        )
        self.model = load_model(self.model_dir, config, self.dtype, self.device)

        if chunked_prefill_size is None:
            chunked_prefill_size = CHUNKED_PREFILL_SIZE.get(self.device.type, 2048)
        chunk = None if chunked_prefill_size == -1 else chunked_prefill_size
        scheduler_config = SchedulerConfig(
            max_running_requests, max_prefill_tokens, chunk, schedule_policy
        )
        slots = kv_slots_for(
            config,
            self.dtype,
            self.device,
            self.max_context,
            max_running_requests,
            max_total_tokens,
            mem_fraction,
        )
        self.kv_pool = KVPool(
            slots,
            config.num_layers,
            config.num_kv_heads,
            config.head_dim,
            self.dtype,
            self.device,
            max_requests=max_running_requests,
            max_context=self.max_context,
        )
        attention = TorchAttention(
            config.num_heads, config.num_kv_heads, config.head_dim, config.sliding_window
        )
        attention.warm_up(self.device, self.dtype)
        self.runner = ModelRunner(self.model, self.kv_pool, attention, self.device)
        self.eos_ids = frozenset(config.eos_token_ids)
        self.grammars = None
        if self.tokenizer is not None:
            self.grammars = GrammarCompiler(
                self.tokenizer,
                config.vocab_size,
                sorted(self.eos_ids),
                grammar_backend,
                json_format,
                grammar_compile_timeout,
                max_cached_bytes=grammar_cache_bytes,
            )
            if self.device.type == "cpu":
                # Now, not under the first constrained request: its compile held the GIL
                # for seconds, stalling all in flight (3.6 s, under load); here, ~0.3 s.
                bitmask.warm_up()
        self.outputs = OutputProcessor(
            self.max_context, self.tokenizer, None if disable_jump_forward else self.grammars
        )
        cache_type = NoPrefixCache if disable_radix_cache else RadixCache
        self.prefix_cache = cache_type(self.kv_pool.free)
        self.scheduler = Scheduler(scheduler_config, self.kv_pool, self.prefix_cache, self.outputs)
        self.request_limits = limits or RequestLimits()
        self.limits = Limits(
            config.vocab_size,
            self.max_context,
            slots,
            prompt_chars_bound(self.tokenizer, self.max_context),
        )
        self._inputs = SpecBuilder(self.tokenizer, self.limits, self.grammars, self.request_limits)
        self._rng = random.Random(seed)
        arrival_wait = ARRIVAL_WAIT.get(self.device.type, ARRIVAL_WAIT["cuda"])
        self._loop = EngineLoop(
            self.scheduler,
            self.runner,
            self.outputs,
            arrival_wait,
            self.request_limits.max_queued_requests,
        )
        logger.info(
            "engine ready: %s, %s on %s, %d KV slots",
            self.model_dir.name,
            self.dtype,
            self.device,
            slots,
        )

    # -- generation --------------------------------------------------------------------------
    def generate(
        self,
        prompt: Any = None,
        sampling_params: ParamsInput = None,
        *,
        input_ids: Any = None,
        return_logprob: bool = False,
        logprob_start_len: int | None = None,
        top_logprobs_num: int | None = None,
        return_text_in_logprobs: bool = False,
        rid: str | Sequence[str] | None = None,
    ) -> GenerateOutput | list[GenerateOutput]:
        """Generate for one prompt or a list of them; blocks until all are done.

        One prompt with n == 1 gives one GenerateOutput; otherwise a list, prompt-major
        (all n samples of the first prompt, then the second's...).
        """
        specs, single = self._inputs.specs(
            prompt,
            input_ids,
            sampling_params,
            return_logprob,
            logprob_start_len,
            top_logprobs_num,
            return_text_in_logprobs,
            rid,
        )
        inbox: queue.SimpleQueue[Event | BaseException] = queue.SimpleQueue()
        self.submit(specs, stream=False, on_event=inbox.put)
        by_rid = {}
        while len(by_rid) < len(specs):
            out = raise_if_error(inbox.get())
            by_rid[out.rid] = out
        results = [by_rid[s.rid] for s in specs]
        return results[0] if single and len(results) == 1 else results

    def stream(
        self,
        prompt: Any = None,
        sampling_params: ParamsInput = None,
        **kwargs: Any,
    ) -> Iterator[StreamChunk]:
        """Yield chunks of new text as one request generates (n must be 1)."""
        spec = self._inputs.single_spec(prompt, sampling_params, kwargs)
        inbox: queue.SimpleQueue[Event | BaseException] = queue.SimpleQueue()
        self.submit([spec], stream=True, on_event=inbox.put)
        try:
            while True:
                chunk = raise_if_error(inbox.get())
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            # A consumer that stops early (break, exception, garbage collection) aborts.
            self.abort(spec.rid)

    async def async_generate(
        self, prompt: Any = None, sampling_params: ParamsInput = None, **kwargs: Any
    ) -> GenerateOutput | list[GenerateOutput]:
        """`generate` for asyncio: awaits without blocking the event loop."""
        specs, single = self._inputs.specs_from(prompt, sampling_params, kwargs)
        inbox: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self.submit(specs, stream=False, on_event=_threadsafe_put(inbox))
        by_rid = {}
        try:
            while len(by_rid) < len(specs):
                out = raise_if_error(await inbox.get())
                by_rid[out.rid] = out
        except asyncio.CancelledError:
            for spec in specs:
                self.abort(spec.rid)
            raise
        results = [by_rid[s.rid] for s in specs]
        return results[0] if single and len(results) == 1 else results

    async def async_stream(
        self, prompt: Any = None, sampling_params: ParamsInput = None, **kwargs: Any
    ) -> AsyncIterator[StreamChunk]:
        spec = self._inputs.single_spec(prompt, sampling_params, kwargs)
        inbox: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self.submit([spec], stream=True, on_event=_threadsafe_put(inbox))
        try:
            while True:
                chunk = raise_if_error(await inbox.get())
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            self.abort(spec.rid)

    def abort(self, rid: str) -> None:
        """Abort request `rid` wherever it is; its slots are freed before the next step."""
        self._loop.abort(rid)

    def abort_all(self, message: str = "aborted") -> None:
        """Abort every request waiting or running; `message` goes in their finish reason."""
        self._loop.abort_all(message)

    # -- the parts of generate, for callers that drive requests themselves (the server) -----
    def prepare(
        self, prompt: Any = None, sampling_params: ParamsInput = None, **kwargs: Any
    ) -> tuple[list[RequestSpec], bool]:
        """Validate, tokenize and compile one call's requests without submitting them.

        Takes `generate`'s arguments, plus `prompt_field` to name the prompt in errors
        ("text", "messages"...). Returns the specs (prompt-major) and whether a single
        prompt was given. Raises ValueError naming the field on bad input.
        """
        return self._inputs.specs_from(prompt, sampling_params, kwargs)

    def submit(
        self,
        specs: RequestSpec | list[RequestSpec],
        stream: bool,
        on_event: Callable[[Event | BaseException], None],
    ) -> None:
        """Start prepared requests, all or none (EngineOverloadedError past the queue limit).
        `on_event` is called from the engine thread with StreamChunks (when `stream`) and
        finally the GenerateOutput or last chunk; or with EngineDeadError."""
        make = partial(
            make_request, stream=stream, on_event=on_event, tokenizer=self.tokenizer,
            eos_ids=self.eos_ids, rng=self._rng,
        )  # fmt: skip
        self._loop.submit([make(spec) for spec in (specs if isinstance(specs, list) else [specs])])

    def observe_timings(self, timings: TokenTimings) -> None:
        """Report every request's time to first token and inter-token gaps to `timings`
        (called on the engine thread), besides any observers added before."""
        self.outputs.timings.append(timings)

    # -- inspection and lifecycle ------------------------------------------------------------
    def stats(self) -> dict[str, int | float]:
        """Counters since start (see engine_stats.read_stats for what each one counts)."""
        in_flight = self._loop.num_in_flight
        return self._loop.call(lambda: read_stats(self, in_flight))  # type: ignore[return-value]

    @property
    def alive(self) -> bool:
        """Whether the engine thread runs (False after shutdown or if it died)."""
        return self._loop.alive

    @property
    def error(self) -> BaseException | None:
        """What killed the engine thread, if something did."""
        return self._loop.error

    def flush_cache(self) -> bool:
        """Empty the prefix cache and the compiled-grammar cache. Refused (returns False,
        and nothing is flushed) while requests are in flight."""
        flushed = bool(self._loop.call(self.scheduler.flush_cache))
        if flushed and self.grammars is not None:
            self.grammars.flush()
        return flushed

    def shutdown(self) -> None:
        """Abort whatever is in flight and stop the engine thread. Idempotent."""
        if self._loop.alive:
            self._loop.stop()
        if self.grammars is not None:
            self.grammars.shutdown()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __del__(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None and loop.alive:
            loop.stop()


def _threadsafe_put(q: asyncio.Queue) -> Callable[[Event | BaseException], None]:
    loop = asyncio.get_running_loop()
    return lambda event: loop.call_soon_threadsafe(q.put_nowait, event)
