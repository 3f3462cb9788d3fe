"""Freeing a thread's OpenMP workers (utils/openmp.py), and the engine doing so for its
caller once it is built."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import pytest
import torch
from loomlm.runtime import Engine
from loomlm.runtime.utils import openmp

pytestmark = [
    pytest.mark.skipif(
        openmp._loaded_libgomp() is None, reason="torch here does not run on GNU libgomp"
    ),
    pytest.mark.skipif(torch.get_num_threads() < 2, reason="one thread forks no OpenMP team"),
]


def thread_ids() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def workers_forked_by(fn: Callable[[], None]) -> set[int]:
    """The threads that appeared while `fn` ran (other tests' threads may come and go, so
    the tests follow these by id rather than counting)."""
    before = thread_ids()
    fn()
    return thread_ids() - before


def gone(ids: set[int], timeout: float = 5.0) -> bool:
    """Whether all of `ids` have exited within `timeout` (freed threads exit asynchronously)."""
    deadline = time.monotonic() + timeout
    while ids & thread_ids():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def fork_a_team() -> None:
    """A torch op large enough to run in parallel, so this thread gets a pool of workers."""
    a = torch.ones(1 << 22)
    torch.add(a, a, out=torch.empty_like(a))


def in_thread(fn: Callable[[], None]) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if errors:
        raise errors[0]


def test_release_frees_the_calling_threads_workers() -> None:
    def body() -> None:
        workers = workers_forked_by(fork_a_team)
        # the calling thread is the team's first member; the pool holds the others
        assert len(workers) >= torch.get_num_threads() - 1
        assert openmp.release_thread_pool()
        assert gone(workers)
        again = workers_forked_by(fork_a_team)  # the thread still runs parallel ops: a new pool
        assert len(again) >= torch.get_num_threads() - 1
        assert openmp.release_thread_pool()
        assert gone(again)

    in_thread(body)


def test_engine_frees_its_callers_pool_once_built() -> None:
    def body() -> None:
        # the caller ran parallel torch code before building the engine
        workers = workers_forked_by(fork_a_team)
        assert workers
        with Engine() as engine:
            engine.generate("Once", {"max_new_tokens": 2})
            assert gone(workers)  # freed when the engine was built

    in_thread(body)
