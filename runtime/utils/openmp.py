"""Hand back the calling thread's OpenMP workers, so that the engine thread's stay fast.

torch's CPU kernels (and inductor's compiled loops, and ours) fork OpenMP teams. GNU libgomp
keeps one pool of worker threads per thread that ever forked one, and counts all of them:
once a process has more pool threads than CPUs, every worker sleeps on a futex between
parallel regions instead of spinning, and each region then waits for the kernel to wake it.
The engine loads and warms the model in the caller's thread and runs it in its own, so the
caller's pool alone tipped that count on a 2-core machine: the linear kernel streamed weights
at 16-18 GB/s in the engine thread against 24-27 in the main one, and a 16 MB `torch.add`
took 1.45 ms there against 0.8 with no second pool. Freeing the caller's pool once the engine
is built (`omp_pause_resource_all`, OpenMP 5.0; GCC's libgomp frees the calling thread's
pool) restores the engine thread's speed. A caller that runs parallel torch ops again later
gets a new pool, at the cost measured above to a running engine.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os

logger = logging.getLogger("loomlm.engine")

OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: free the threads, keep nothing else


@functools.cache
def _loaded_libgomp() -> ctypes.CDLL | None:
    """The libgomp this process already runs torch with (torch wheels ship their own copy),
    never a second one; None where there is none (macOS, Intel's OpenMP, Windows)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libgomp" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        except OSError:
            continue
        if hasattr(lib, "omp_pause_resource_all"):
            lib.omp_pause_resource_all.argtypes = [ctypes.c_int]
            lib.omp_pause_resource_all.restype = ctypes.c_int
            return lib
    return None


def release_thread_pool() -> bool:
    """Free the calling thread's OpenMP worker threads; False where that is not possible.
    Must not be called from inside a parallel region (Python code never is)."""
    lib = _loaded_libgomp()
    if lib is None:
        return False
    ok = lib.omp_pause_resource_all(OMP_PAUSE_SOFT) == 0
    if not ok:
        logger.debug("omp_pause_resource_all refused to free this thread's OpenMP pool")
    return ok
