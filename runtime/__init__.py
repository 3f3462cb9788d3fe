"""loomlm.runtime: the inference engine (continuous batching over a paged KV pool)."""

from __future__ import annotations

from .constrained.json_format import JsonFormat
from .engine.engine import Engine
from .engine.errors import EngineDeadError, EngineOverloadedError
from .engine.outputs import GenerateOutput, StreamChunk
from .engine.request_limits import RequestLimits
from .sampling.sampling_params import SamplingParams
from .scheduler.request import FinishReason

__all__ = [
    "Engine",
    "EngineDeadError",
    "EngineOverloadedError",
    "FinishReason",
    "GenerateOutput",
    "JsonFormat",
    "RequestLimits",
    "SamplingParams",
    "StreamChunk",
]
