"""loomlm.runtime: the inference engine (continuous batching over a paged KV pool).

Its public names load on first use: the language imports the runtime's torch-free request
types (`loomlm.runtime.sampling`) without loading torch and the engine.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .constrained.json_format import JsonFormat
    from .engine.config import EngineConfig
    from .engine.engine import Engine
    from .engine.errors import EngineDeadError, EngineOverloadedError
    from .engine.outputs import GenerateOutput, StreamChunk
    from .engine.request_limits import RequestLimits
    from .sampling.generate_request import GenerateRequest
    from .sampling.sampling_params import SamplingParams
    from .scheduler.request import FinishReason

# public name -> the module that defines it
_WHERE = {
    "Engine": ".engine.engine",
    "EngineConfig": ".engine.config",
    "EngineDeadError": ".engine.errors",
    "EngineOverloadedError": ".engine.errors",
    "FinishReason": ".scheduler.request",
    "GenerateOutput": ".engine.outputs",
    "GenerateRequest": ".sampling.generate_request",
    "JsonFormat": ".constrained.json_format",
    "RequestLimits": ".engine.request_limits",
    "SamplingParams": ".sampling.sampling_params",
    "StreamChunk": ".engine.outputs",
}

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineDeadError",
    "EngineOverloadedError",
    "FinishReason",
    "GenerateOutput",
    "GenerateRequest",
    "JsonFormat",
    "RequestLimits",
    "SamplingParams",
    "StreamChunk",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
