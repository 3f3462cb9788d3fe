"""Threads with room to recurse.

The grammar backends are native code that recurses over a grammar's structure: a chain of
3,000 rules overflowed the default 8 MiB stack of a Python thread and killed the process
(a segfault no `try` can catch). The engine thread and the grammar compilers therefore run on
64 MiB stacks: address space only, of which a thread touches what it uses. The request
limits (RequestLimits.max_grammar_rules...) keep every accepted grammar far inside that.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

STACK_BYTES = 64 << 20
_lock = threading.Lock()


@contextlib.contextmanager
def large_stacks() -> Iterator[None]:
    """Threads started inside get STACK_BYTES of stack (the setting is process-wide, so
    it is held only while they start)."""
    with _lock:
        previous = threading.stack_size(STACK_BYTES)
        try:
            yield
        finally:
            threading.stack_size(previous)


def start_thread(target: Callable[[], None], name: str) -> threading.Thread:
    with large_stacks():
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
    return thread


T = TypeVar("T")


def threadsafe_put(q: asyncio.Queue[T]) -> Callable[[T], None]:
    """A function any thread may call to put an item into `q`, which belongs to the running
    event loop (the engine thread hands events to asyncio consumers this way)."""
    loop = asyncio.get_running_loop()

    def put(item: T) -> None:
        loop.call_soon_threadsafe(q.put_nowait, item)

    return put
