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

from ..constrained import bitmask
from ..constrained.grammar_compiler import GrammarCompiler
from ..executor.attention.torch_backend import TorchAttention
from ..executor.model_runner import ModelRunner
from ..executor.models.config import ModelConfig
from ..executor.models.loader import load_model, resolve_dtype, resolve_model_dir
from ..executor.packed_linear import make_row_invariant, pack_linears
from ..executor.quantize import quantize_linears
from ..kvcache.kv_budget import kv_slots_for
from ..kvcache.kv_pool import KVPool
from ..kvcache.prefix_cache import NoPrefixCache
from ..kvcache.radix_cache import RadixCache
from ..sampling.generate_request import GenerateRequest, ParamsInput, PromptInput
from ..scheduler.output_processor import OutputProcessor, TokenTimings
from ..scheduler.scheduler import Scheduler
from ..utils.openmp import release_thread_pool
from ..utils.threads import threadsafe_put
from ..weights.service import WeightService
from ..weights.updater import WeightUpdater
from .config import EngineConfig
from .input_checks import Limits, prompt_chars_bound
from .inputs import RequestSpec, SpecBuilder, make_request
from .loop import ArrivalWait, EngineLoop, raise_if_error
from .memory_occupation import MemoryOccupation
from .outputs import Event, GenerateOutput, StreamChunk
from .request_limits import RequestLimits
from .rl_control import RLControl
from .stats import read_stats
from .tokenizer import load_tokenizer

logger = logging.getLogger("loomlm.engine")

# Starting from an empty batch, how long to wait for the rest of a burst (see ArrivalWait):
# a small share of one step's time on each device.
ARRIVAL_WAIT = {"cpu": ArrivalWait(0.003, 0.03), "cuda": ArrivalWait(0.0005, 0.005)}


class Engine(RLControl):
    """An in-process inference engine with continuous batching over a paged KV pool.

    Args:
        model: a checkpoint directory (config.json + safetensors), a hub id where a hub is
            reachable, or None for the built-in TinyStories 260K model.
        **options: the fields of `EngineConfig` (see engine/config.py for each one's default
            and meaning), each by its own name (`schedule_policy="fcfs"`, `max_n=4`) or a
            whole group (`scheduler=SchedulerConfig(...)`, `limits=RequestLimits(...)`).
            An unknown option is a ValueError naming the nearest valid one.
            `Engine.from_config(config)` takes a built EngineConfig.

    `engine.config` is the config in force, the by-device defaults filled in.

    Errors: bad input raises ValueError naming the field; a call that would pass
    `max_queued_requests` raises EngineOverloadedError; if the engine thread ever dies,
    calls in flight and later ones raise EngineDeadError.
    """

    def __init__(self, model: str | Path | None = None, **options: Any) -> None:
        if isinstance(options.get("dtype"), torch.dtype):
            options["dtype"] = str(options["dtype"]).removeprefix("torch.")
        if isinstance(options.get("device"), torch.device):
            options["device"] = str(options["device"])
        self._start(EngineConfig.from_options(model, **options))

    @classmethod
    def from_config(cls, config: EngineConfig) -> Engine:
        engine = cls.__new__(cls)
        engine._start(config)
        return engine

    def _start(self, config: EngineConfig) -> None:
        self.device = torch.device(
            config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.config = config = config.for_device(self.device.type)
        self.model_dir = resolve_model_dir(config.model)
        self.model_config = model_config = ModelConfig.from_dir(self.model_dir)
        self.dtype = resolve_dtype(config.dtype, model_config)
        self.max_context = config.context_length or model_config.max_position_embeddings
        if self.max_context > model_config.max_position_embeddings:
            model_config.max_position_embeddings = self.max_context  # rope tables must cover it
        self.tokenizer = (
            None
            if config.skip_tokenizer_init
            else load_tokenizer(config.tokenizer or self.model_dir)
        )
        self.model = load_model(self.model_dir, model_config, self.dtype, self.device)
        if config.deterministic:  # every layer on the row-wise kernel, whatever its size
            make_row_invariant(self.model)
        quantize_linears(self.model, config.quantization, not config.quantization_keep_lm_head)
        pack_linears(self.model)  # CPU: weights in a kernel's layout (packed_linear.py)

        sched = config.scheduler
        slots = kv_slots_for(
            model_config,
            self.dtype,
            self.device,
            self.max_context,
            sched.max_running_requests,
            config.cache,
        )
        self.kv_pool = KVPool(
            slots,
            model_config.num_layers,
            model_config.num_kv_heads,
            model_config.head_dim,
            self.dtype,
            self.device,
            max_requests=sched.max_running_requests,
            max_context=self.max_context,
        )
        attention = TorchAttention(
            model_config.num_heads,
            model_config.num_kv_heads,
            model_config.head_dim,
            model_config.sliding_window,
            deterministic=config.deterministic,
        )
        attention.warm_up(self.device)
        self.runner = ModelRunner(
            self.model, self.kv_pool, attention, self.device, config.enforce_eager
        )
        self.runner.warm_up()
        self.eos_ids = frozenset(model_config.eos_token_ids)
        self.grammars = None
        if self.tokenizer is not None:
            self.grammars = GrammarCompiler(
                self.tokenizer, model_config.vocab_size, sorted(self.eos_ids), config.constraints
            )
            if self.device.type == "cpu":
                # Now, not under the first constrained request: its compile held the GIL
                # for seconds, stalling all in flight (3.6 s, under load); here, ~0.3 s.
                bitmask.warm_up()
        jump_forward = not config.constraints.disable_jump_forward and self.grammars is not None
        self.outputs = OutputProcessor(self.max_context, self.tokenizer, jump_forward)
        cache_type = NoPrefixCache if config.cache.disable_radix_cache else RadixCache
        self.prefix_cache = cache_type(self.kv_pool.free)
        self.scheduler = Scheduler(sched, self.kv_pool, self.prefix_cache, self.outputs)
        self.limits = Limits(
            model_config.vocab_size,
            self.max_context,
            slots,
            prompt_chars_bound(self.tokenizer, self.max_context),
        )
        self._inputs = SpecBuilder(self.tokenizer, self.limits, self.grammars, config.limits)
        self._rng = random.Random(config.seed)
        arrival_wait = ARRIVAL_WAIT.get(self.device.type, ARRIVAL_WAIT["cuda"])
        self._loop = EngineLoop(
            self.scheduler,
            self.runner,
            self.outputs,
            arrival_wait,
            config.limits.max_queued_requests,
        )
        self._memory = MemoryOccupation(self.model, self.kv_pool, self.device)
        self._weights = WeightService(
            WeightUpdater(self.model, model_config, self.dtype),
            self._loop.call,
            self.scheduler.invalidate_cache,
            self._set_weight_version,  # RLControl's
        )
        if self.device.type == "cpu":
            # Loading and compiling forked OpenMP teams in this thread; the engine thread's
            # run ~1.5x faster once they are gone (utils/openmp.py).
            release_thread_pool()
        logger.info(
            "engine ready: %s, %s on %s, %d KV slots",
            self.model_dir.name,
            self.dtype,
            self.device,
            slots,
        )

    @property
    def request_limits(self) -> RequestLimits:
        """What one request may ask for (`config.limits`)."""
        return self.config.limits

    # -- generation --------------------------------------------------------------------------
    def generate(
        self,
        prompt: PromptInput | None = None,
        sampling_params: ParamsInput = None,
        *,
        input_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
        return_logprob: bool = False,
        logprob_start_len: int | None = None,
        top_logprobs_num: int | None = None,
        return_text_in_logprobs: bool = False,
        rid: str | Sequence[str] | None = None,
    ) -> GenerateOutput | list[GenerateOutput]:
        """Generate for one prompt (text or token ids) or a list of them; blocks until all
        are done.

        One prompt with n == 1 gives one GenerateOutput; otherwise a list, prompt-major
        (all n samples of the first prompt, then the second's...).
        """
        request = GenerateRequest(
            prompt,
            input_ids,
            sampling_params,
            return_logprob,
            logprob_start_len,
            top_logprobs_num,
            return_text_in_logprobs,
            rid,
        )
        return self.generate_request(request)

    def generate_request(self, request: GenerateRequest) -> GenerateOutput | list[GenerateOutput]:
        """`generate` for a request already described (what the language's backend sends)."""
        specs, single = self._inputs.specs(request)
        inbox: queue.SimpleQueue[Event | BaseException] = queue.SimpleQueue()
        self.submit(specs, stream=False, on_event=inbox.put)
        by_rid: dict[str, Event] = {}
        while len(by_rid) < len(specs):
            out = raise_if_error(inbox.get())
            by_rid[out.rid] = out
        return _in_call_order(specs, by_rid, single)

    def stream(
        self, prompt: PromptInput | None = None, sampling_params: ParamsInput = None, **fields: Any
    ) -> Iterator[StreamChunk]:
        """Yield chunks of new text as one request generates (n must be 1). `fields`: the
        other fields of a GenerateRequest (`input_ids`, `return_logprob`, `rid`...)."""
        yield from self.stream_request(
            GenerateRequest(prompt, sampling_params=sampling_params, **fields)
        )

    def stream_request(self, request: GenerateRequest) -> Iterator[StreamChunk]:
        """`stream` for a request already described."""
        spec = self._inputs.single_spec(request)
        inbox: queue.SimpleQueue[Event | BaseException] = queue.SimpleQueue()
        self.submit([spec], stream=True, on_event=inbox.put)
        try:
            while True:
                chunk = raise_if_error(inbox.get())
                assert isinstance(chunk, StreamChunk)
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            # A consumer that stops early (break, exception, garbage collection) aborts.
            self.abort(spec.rid)

    async def async_generate(
        self, prompt: PromptInput | None = None, sampling_params: ParamsInput = None, **fields: Any
    ) -> GenerateOutput | list[GenerateOutput]:
        """`generate` for asyncio: awaits without blocking the event loop."""
        request = GenerateRequest(prompt, sampling_params=sampling_params, **fields)
        specs, single = self._inputs.specs(request)
        inbox: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self.submit(specs, stream=False, on_event=threadsafe_put(inbox))
        by_rid: dict[str, Event] = {}
        try:
            while len(by_rid) < len(specs):
                out = raise_if_error(await inbox.get())
                by_rid[out.rid] = out
        except asyncio.CancelledError:
            for spec in specs:
                self.abort(spec.rid)
            raise
        return _in_call_order(specs, by_rid, single)

    async def async_stream(
        self, prompt: PromptInput | None = None, sampling_params: ParamsInput = None, **fields: Any
    ) -> AsyncIterator[StreamChunk]:
        request = GenerateRequest(prompt, sampling_params=sampling_params, **fields)
        spec = self._inputs.single_spec(request)
        inbox: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self.submit([spec], stream=True, on_event=threadsafe_put(inbox))
        try:
            while True:
                chunk = raise_if_error(await inbox.get())
                assert isinstance(chunk, StreamChunk)
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
    def prepare(self, request: GenerateRequest) -> tuple[list[RequestSpec], bool]:
        """Validate, tokenize and compile one call's requests without submitting them.

        Returns the specs (prompt-major) and whether a single prompt was given. Raises
        ValueError naming the field on bad input (`request.prompt_field` names the prompt).
        """
        return self._inputs.specs(request)

    def submit(
        self,
        specs: RequestSpec | list[RequestSpec],
        stream: bool,
        on_event: Callable[[Event | BaseException], None],
    ) -> None:
        """Start prepared requests, all or none (EngineOverloadedError past the queue limit).
        `on_event` is called from the engine thread with StreamChunks (when `stream`) and
        finally the GenerateOutput or last chunk; or with EngineDeadError."""
        self._memory.check_serving("generate")
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
        """Counters since start (see engine/stats.py, read_stats, for what each one counts)."""
        in_flight = self._loop.num_in_flight
        stats: dict[str, int | float] = self._loop.call(lambda: read_stats(self, in_flight))
        return stats

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
        weights = getattr(self, "_weights", None)
        if weights is not None:
            weights.close()
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


def _in_call_order(
    specs: list[RequestSpec], by_rid: dict[str, Event], single: bool
) -> GenerateOutput | list[GenerateOutput]:
    """A call's outputs in the order of its specs (prompt-major); one output alone for a
    single prompt with n == 1."""
    results = [by_rid[s.rid] for s in specs]
    outputs = [r for r in results if isinstance(r, GenerateOutput)]
    assert len(outputs) == len(results)  # non-streaming requests end with their output
    return outputs[0] if single and len(outputs) == 1 else outputs
