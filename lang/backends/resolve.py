"""Which backend a program runs on: the one given, else the default one."""

from __future__ import annotations

import threading
import weakref
from typing import Any

from .base import Backend
from .engine_backend import EngineBackend, EngineLike

_default: Backend | None = None
_wrappers: weakref.WeakKeyDictionary[Any, Backend] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def as_backend(obj: Any) -> Backend:
    """A Backend as is; an in-process `loomlm.runtime.Engine` wrapped (once per engine)."""
    if isinstance(obj, Backend):
        return obj
    if isinstance(obj, EngineLike):
        with _lock:
            wrapper = _wrappers.get(obj)
            if wrapper is None:
                wrapper = _wrappers[obj] = EngineBackend(obj)
            return wrapper
    raise TypeError(
        f"backend: expected a loomlm.runtime.Engine or a backend such as "
        f"loomlm.RuntimeEndpoint(url), got {type(obj).__name__}"
    )


def set_default_backend(backend: Any) -> None:
    """The backend programs run on when `run()` is given none."""
    global _default
    _default = None if backend is None else as_backend(backend)


def get_default_backend() -> Backend | None:
    return _default


def resolve_backend(backend: Any) -> Backend:
    if backend is not None:
        return as_backend(backend)
    if _default is None:
        raise ValueError(
            "backend: none given and no default set; call loomlm.set_default_backend("
            "loomlm.runtime.Engine()) or pass backend= to run()"
        )
    return _default
