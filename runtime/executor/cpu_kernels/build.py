"""Builds and loads the C++ CPU kernels once per process, or says why it could not.

The build needs a C++ compiler. Without one (or on any build error) `load()` returns False
once, with one warning, and callers use their pure-torch reference paths.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

logger = logging.getLogger("loomlm.kernels")

_SOURCES = [
    Path(__file__).with_name(name)
    for name in (
        "paged_decode.cpp",
        "blocked_linear.cpp",
        "extend_attention.cpp",
        "int8_linear.cpp",
    )
]
_lock = threading.Lock()
_loaded: bool | None = None  # None: not tried yet


def disabled() -> bool:
    """LOOMLM_DISABLE_COMPILE=1 turns off everything compiled: these kernels and the compiled
    model graph (for debugging, and to test the fallback)."""
    return os.environ.get("LOOMLM_DISABLE_COMPILE", "") not in ("", "0")


def load() -> bool:
    """True when torch.ops.loomlm_cpu.* are registered and usable."""
    global _loaded
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is None:
            _loaded = False if disabled() else _build()
    return _loaded


def compiler_present() -> bool:
    """Whether a C++ compiler is on the PATH (`CXX`, else `c++`, as torch's builder looks)."""
    return shutil.which(os.environ.get("CXX", "c++")) is not None


def _build() -> bool:
    from torch.utils import cpp_extension

    if not compiler_present():
        logger.warning("C++ CPU kernels unavailable: no C++ compiler (CXX, or c++ on the PATH)")
        return False
    start = time.perf_counter()
    logger.info("loading the C++ CPU kernels (a first build on a machine takes ~30 s)")
    try:
        cpp_extension.load(
            name="loomlm_cpu_kernels",
            sources=[str(s) for s in _SOURCES],
            # -march=native: the build lives in this machine's cache only. Reassociating float
            # sums lets the compiler vectorise the dot products (2.5x on the benchmark
            # machine); unlike -ffast-math it keeps infinities, which the softmax relies on.
            extra_cflags=[
                "-O3",
                "-march=native",
                "-fopenmp",
                "-fassociative-math",
                "-fno-signed-zeros",
                "-fno-trapping-math",
                "-fno-math-errno",
            ],  # fmt: skip
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    except Exception as exc:  # no compiler, headers missing, ...
        logger.warning("C++ CPU kernels unavailable, using the torch reference paths: %s", exc)
        return False
    seconds = time.perf_counter() - start
    if seconds > 2:
        logger.info("built the C++ CPU kernels in %.1f s (cached for later starts)", seconds)
    return True
