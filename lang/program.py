"""`@function` programs and how they run: one at a time, streamed, or as a batch."""

from __future__ import annotations

import inspect
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from . import ir
from .backends.base import Backend
from .backends.resolve import resolve_backend
from .executor import Executor
from .state import ProgramState
from .tracer import trace_prefix

logger = logging.getLogger(__name__)

# A shared first segment shorter than this is not worth a request of its own (SGLang's
# threshold, in characters).
PRECACHE_MIN_CHARS = 64


class Function:
    """A program: a Python function whose first argument, `s`, is the program state.

    Example::

        @loomlm.function
        def capital(s, country):
            s += f"The capital of {country} is" + loomlm.gen("city", max_tokens=8, stop=".")

        capital.run(country="France")["city"]
        states = capital.run_batch([{"country": c} for c in ("France", "Peru")])
    """

    def __init__(self, func: Callable[..., Any], bind_arguments: dict[str, Any] | None = None):
        self.func = func
        self.bind_arguments = dict(bind_arguments or {})
        params = list(inspect.signature(func).parameters)
        if not params or params[0] != "s":
            raise ValueError(
                f"function: the first argument of {func.__name__}() must be `s`, the program state"
            )
        self.arg_names = params[1:]
        self.__name__ = getattr(func, "__name__", "program")
        self.__doc__ = func.__doc__

    def bind(self, **kwargs: Any) -> Function:
        """A copy with some arguments fixed."""
        unknown = sorted(set(kwargs) - set(self.arg_names))
        if unknown:
            raise TypeError(f"bind: {self.__name__}() has no argument {', '.join(unknown)}")
        return Function(self.func, {**self.bind_arguments, **kwargs})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Called from inside another program (`other(s, ...)`), it is a plain call."""
        return self.func(*args, **{**self.bind_arguments, **kwargs})

    def run(
        self,
        *args: Any,
        max_new_tokens: int | None = None,
        stream: bool = False,
        backend: Any = None,
        **kwargs: Any,
    ) -> ProgramState:
        """Run the program once and return its state.

        Keyword arguments named like sampling parameters (`temperature`, `stop`, ...) are
        the defaults of every gen in the program; the rest are the program's arguments.
        With `stream=True` the program runs in the background and the state is returned at
        once: read it with `state.text_iter()`. Otherwise an error in the program is raised
        here, with the program's traceback.
        """
        # A program argument wins over a sampling default of the same name (`n`, say).
        sampling = {
            k: kwargs.pop(k) for k in ir.SAMPLING_ARGS if k in kwargs and k not in self.arg_names
        }
        defaults = ir.GenParams.run_defaults(max_new_tokens=max_new_tokens, **sampling)
        arguments = self._arguments(args, kwargs)
        be = resolve_backend(backend)
        if stream:
            state = _new_state(be, defaults, stream=True)
            threading.Thread(
                target=_run_quietly, args=(self.func, state, arguments), daemon=True
            ).start()
            return state
        return _run_program(self.func, _new_state(be, defaults), arguments)

    def run_batch(
        self,
        batch_kwargs: list[dict[str, Any] | list[Any] | tuple[Any, ...]],
        *,
        max_new_tokens: int | None = None,
        backend: Any = None,
        num_threads: int | str = "auto",
        progress_bar: bool = False,
        generator_style: bool = False,
        **sampling: Any,
    ) -> list[ProgramState] | Iterator[ProgramState]:
        """Run the program once per argument set, concurrently; states in input order.

        A program that fails records its error in its state (`state.error()`); the others
        go on. `num_threads="auto"` runs up to max(96, 16 x CPUs) programs at once. The text
        every program starts with is computed once before the batch is sent.
        """
        unknown = sorted(set(sampling) - set(ir.SAMPLING_ARGS))
        if unknown:
            raise TypeError(f"run_batch: unexpected arguments: {', '.join(unknown)}")
        if not isinstance(batch_kwargs, (list, tuple)):
            raise TypeError("run_batch: batch_kwargs must be a list of dicts or of argument lists")
        defaults = ir.GenParams.run_defaults(max_new_tokens=max_new_tokens, **sampling)
        be = resolve_backend(backend)
        batch = [
            self._arguments(a, {}) if isinstance(a, (list, tuple)) else self._arguments((), a)
            for a in batch_kwargs
        ]
        if num_threads == "auto":
            num_threads = max(96, (os.cpu_count() or 1) * 16)
        if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
            raise ValueError(
                f"num_threads: expected 'auto' or a positive integer, got {num_threads!r}"
            )
        if len(batch) > 1:
            self._precache(be)
        results = _run_pool(
            self.func, be, defaults, batch, min(num_threads, max(len(batch), 1)), progress_bar
        )
        return results if not generator_style else iter(results)

    def _precache(self, backend: Backend) -> None:
        prefix = trace_prefix(self.func, self.arg_names, self.bind_arguments, backend.chat_template)
        if len(prefix) >= PRECACHE_MIN_CHARS:
            try:
                backend.cache_prefix(prefix)
            except Exception as exc:  # an optimisation: the programs themselves still run
                logger.warning("run_batch: caching the shared prefix failed: %s", exc)

    def _arguments(self, args: tuple | list, kwargs: dict[str, Any]) -> dict[str, Any]:
        if len(args) > len(self.arg_names):
            raise TypeError(
                f"{self.__name__}() takes {len(self.arg_names)} arguments after s, got {len(args)}"
            )
        arguments = {**self.bind_arguments, **dict(zip(self.arg_names, args)), **kwargs}
        unknown = sorted(set(arguments) - set(self.arg_names))
        if unknown:
            raise TypeError(f"{self.__name__}() has no argument {', '.join(unknown)}")
        return arguments


def function(func: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Decorator: turn `def program(s, ...)` into a runnable `Function`."""
    if options:
        raise TypeError(f"function: unexpected options {sorted(options)}")
    if func is None:
        return function
    return Function(func)


def _new_state(backend: Backend, defaults: ir.GenParams, stream: bool = False) -> ProgramState:
    return ProgramState(Executor(backend, defaults, backend.chat_template, stream))


def _run_program(
    func: Callable[..., Any], state: ProgramState, arguments: dict[str, Any]
) -> ProgramState:
    try:
        state.ret_value = func(state, **arguments)
        state.sync()
    finally:
        for executor in state._executor.registry:
            executor.end()
    return state


def _run_quietly(func: Callable[..., Any], state: ProgramState, arguments: dict[str, Any]) -> None:
    """A program in the background: its error stays in its state (`state.error()`)."""
    try:
        _run_program(func, state, arguments)
    except BaseException as exc:  # noqa: BLE001 - handed to the reader of the state
        executor = state._executor
        if executor.error is None:
            executor.error = exc


def _run_pool(
    func: Callable[..., Any],
    backend: Backend,
    defaults: ir.GenParams,
    batch: list[dict[str, Any]],
    num_threads: int,
    progress_bar: bool,
) -> list[ProgramState]:
    states: list[Any] = [None] * len(batch)
    bar = None
    if progress_bar:
        from tqdm import tqdm  # plain text: tqdm.auto wants ipywidgets in notebooks

        bar = tqdm(total=len(batch), desc=getattr(func, "__name__", "program"))
    pending: set[Future] = set()
    with ThreadPoolExecutor(num_threads, thread_name_prefix="loomlm-batch") as pool:
        for i, arguments in enumerate(batch):
            pending.add(pool.submit(_run_one, func, states, i, backend, defaults, arguments))
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            if bar is not None:
                bar.update(len(done))
    if bar is not None:
        bar.close()
    return states


def _run_one(
    func: Callable[..., Any],
    states: list[Any],
    i: int,
    backend: Backend,
    defaults: ir.GenParams,
    arguments: dict[str, Any],
) -> None:
    state = _new_state(backend, defaults)
    states[i] = state
    _run_quietly(func, state, arguments)
