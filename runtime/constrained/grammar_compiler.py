"""Compiling constraints off the engine loop, once per (constraint, backend), with a time limit.

Requests compile in the caller's thread before they reach the engine, through a small
thread pool so that a compile that runs past `timeout_s` can be abandoned with a clear
error while the engine keeps stepping. Results (and errors) are cached, so a constraint
used again costs a dictionary lookup plus one matcher copy.

The cache is bounded in bytes as well as entries: a compiled grammar's size is not
observable, so each entry is charged by a model fitted to measurements (RSS growth per
grammar compiled and used, llguidance, 512- and 151k-token vocabularies): a fixed
ENTRY_BYTES plus BYTES_PER_CHAR per character of the constraint (large enums and
alternations measured 23-29 bytes per character). `flush()` empties it and hands the freed
heap back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from ..utils.threads import large_stacks
from .config import ConstraintConfig
from .constraint import Constraint
from .json_format import JsonFormat
from .matcher import CompiledGrammar, GrammarBackend

ENTRY_BYTES = 256 << 10
BYTES_PER_CHAR = 32

# The backend `auto` picks per constraint kind, from `python -m loomlm.bench
# constrained` (see README): llguidance compiles every kind in about a millisecond and keeps
# per-token masks in the tens of microseconds; outlines-core masks regexes faster once built
# but takes 50-200 ms to build a small regex and seconds for a JSON schema.
AUTO_BACKEND = {"regex": "llguidance", "choices": "llguidance", "json_schema": "llguidance",
                "ebnf": "llguidance"}  # fmt: skip


class GrammarCompiler:
    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        eos_ids: list[int],
        config: ConstraintConfig | None = None,
        max_cached: int = 1024,
    ) -> None:
        config = config or ConstraintConfig()
        self.backend_name = config.grammar_backend
        self.timeout_s = config.grammar_compile_timeout
        self._args = (tokenizer, vocab_size, list(eos_ids), config.json_format or JsonFormat())
        self._backends: dict[str, GrammarBackend] = {}
        self._cache: OrderedDict[tuple[str, Constraint], Future] = OrderedDict()
        self._max_cached = max_cached
        self._max_cached_bytes = config.grammar_cache_bytes
        self.cached_bytes = 0  # the cache's charge (see the module's docstring)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="loomlm-grammar")

    def backend_for(self, kind: str) -> GrammarBackend:
        name = AUTO_BACKEND[kind] if self.backend_name == "auto" else self.backend_name
        with self._lock:
            backend = self._backends.get(name)
            if backend is None:
                backend = self._backends[name] = _make_backend(name, *self._args)
            return backend

    def compile(self, constraint: Constraint) -> CompiledGrammar:
        """The compiled grammar, from the cache or built now; ValueError naming the field
        if the constraint is invalid or takes longer than the time limit to compile."""
        backend = self.backend_for(constraint.kind)
        key = (backend.name, constraint)
        with self._lock:
            future = self._cache.get(key)
            if future is None:
                with large_stacks():  # the pool starts its threads on demand
                    future = self._pool.submit(backend.compile, constraint)
                self._cache[key] = future
                self.cached_bytes += entry_bytes(constraint)
                while len(self._cache) > 1 and (
                    len(self._cache) > self._max_cached
                    or self.cached_bytes > self._max_cached_bytes
                ):
                    (_, dropped), _ = self._cache.popitem(last=False)
                    self.cached_bytes -= entry_bytes(dropped)
            else:
                self._cache.move_to_end(key)
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            raise ValueError(
                f"{constraint.kind}: compiling took longer than {self.timeout_s:g} s "
                f"({constraint.describe()}); simplify it or raise grammar_compile_timeout"
            ) from None

    @property
    def num_cached(self) -> int:
        return len(self._cache)

    def flush(self) -> None:
        """Drop every cached grammar (requests running keep their own matchers)."""
        with self._lock:
            self._cache.clear()
            self.cached_bytes = 0
        release_free_heap()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def entry_bytes(constraint: Constraint) -> int:
    return ENTRY_BYTES + BYTES_PER_CHAR * len(constraint.value)


def release_free_heap() -> None:
    """Give the allocator's free memory back to the system (glibc keeps it otherwise: the
    native grammar objects freed by a flush would not show in the process's RSS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _make_backend(
    name: str, tokenizer: Any, vocab_size: int, eos_ids: list[int], json_format: JsonFormat
) -> GrammarBackend:
    if name == "llguidance":
        from .llguidance_backend import LLGuidanceBackend

        return LLGuidanceBackend(tokenizer, vocab_size, eos_ids, json_format)
    if name == "outlines":
        from .outlines_backend import OutlinesBackend

        return OutlinesBackend(tokenizer, vocab_size, eos_ids)
    from .xgrammar_backend import XGrammarBackend

    return XGrammarBackend(tokenizer, vocab_size, eos_ids, json_format)
