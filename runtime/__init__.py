"""loomlm.runtime: the inference engine (continuous batching over a paged KV pool)."""

from __future__ import annotations

from .constrained.json_format import JsonFormat
from .engine import Engine
from .outputs import GenerateOutput, StreamChunk
from .request import FinishReason
from .sampling_params import SamplingParams

__all__ = [
    "Engine",
    "FinishReason",
    "GenerateOutput",
    "JsonFormat",
    "SamplingParams",
    "StreamChunk",
]
