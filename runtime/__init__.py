"""loomlm.runtime: the inference engine (continuous batching over a paged KV pool)."""

from __future__ import annotations

from .constrained.json_format import JsonFormat
from .engine import Engine
from .errors import EngineDeadError, EngineOverloadedError
from .outputs import GenerateOutput, StreamChunk
from .request import FinishReason
from .request_limits import RequestLimits
from .sampling_params import SamplingParams

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
