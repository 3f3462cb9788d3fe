"""EngineConfig: every engine option, declared once.

Each field carries its default, its validation (in `__post_init__`) and its help text. The
same fields are `Engine(model, **options)`'s keywords (each option by its own name, or a
whole group: `scheduler=SchedulerConfig(...)`), `loomlm serve`'s flags (SGLang's names), and
what `/server_info` reports. Adding an option is adding a field.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..constrained.config import ConstraintConfig
from ..executor.quantize import check_scheme
from ..kvcache.config import CacheConfig
from ..scheduler.config import SchedulerConfig
from ..utils.checks import check_bool, check_int
from ..utils.options import group, option, resolve
from .request_limits import RequestLimits


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model: str | Path | None = option(
        None,
        "a checkpoint directory (config.json + safetensors), a hub id where a hub is "
        "reachable, or none for the built-in TinyStories 260K model",
        flags=("--model-path",),
    )
    dtype: str = option("auto", "auto (the checkpoint's), float32, bfloat16 or float16")
    device: str | None = option(None, "cpu, cuda, cuda:1...; default: CUDA when available")
    context_length: int | None = option(None, "override the model's maximum context")
    tokenizer: str | Path | None = option(
        None, "tokenizer directory (default: the model's)", flags=("--tokenizer-path",)
    )
    skip_tokenizer_init: bool = option(False, "token ids only: no text in, no text out")
    seed: int = option(0, "seeds the requests that give no seed", flags=("--random-seed",))
    enforce_eager: bool = option(
        False,
        "run the model op by op: no compiled graph of the forward step (CPU compiles one by "
        "default, at start-up, cached on disk across processes)",
    )
    quantization: str | None = option(
        None,
        "quantization at load: int8 (weights symmetric per output channel; on AVX-512 VNNI "
        "the activations per row too) for the decoder layers' projections and an untied LM "
        "head; the embedding keeps the checkpoint's dtype",
    )
    quantization_keep_lm_head: bool = option(
        False, "with quantization, keep an untied LM head in the checkpoint's dtype"
    )
    deterministic: bool = option(
        False,
        "batch-invariant mode: a request's tokens and logprobs are bitwise the same alone, in "
        "any batch, with or without a cached prefix (CPU, with the C++ kernels)",
        flags=("--enable-deterministic-inference",),
    )
    scheduler: SchedulerConfig = group(SchedulerConfig)
    cache: CacheConfig = group(CacheConfig)
    constraints: ConstraintConfig = group(ConstraintConfig)
    limits: RequestLimits = group(RequestLimits)

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, str):  # the loader knows which names it takes
            raise ValueError(f"dtype: expected a name such as 'bfloat16', got {self.dtype!r}")
        if self.context_length is not None:
            check_int("context_length", self.context_length, low=2)
        check_bool("skip_tokenizer_init", self.skip_tokenizer_init)
        check_bool("enforce_eager", self.enforce_eager)
        check_bool("deterministic", self.deterministic)
        check_scheme(self.quantization)
        check_bool("quantization_keep_lm_head", self.quantization_keep_lm_head)
        if self.quantization is not None and self.deterministic:
            raise ValueError(
                "quantization: not available in deterministic mode (its kernel is the "
                "batch-invariant one, which runs float32 and bfloat16 weights)"
            )
        check_int("seed", self.seed, low=0)

    @classmethod
    def from_options(cls, model: str | Path | None = None, **options: Any) -> EngineConfig:
        """`Engine(model, **options)`'s config; ValueError for an unknown option, naming the
        nearest valid one."""
        return resolve(cls, {"model": model, **options})

    def for_device(self, device_type: str) -> EngineConfig:
        """This config with the by-device defaults filled in (what the engine runs with)."""
        return replace(self, scheduler=self.scheduler.for_device(device_type))
