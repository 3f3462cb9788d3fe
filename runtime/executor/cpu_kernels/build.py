"""Builds and loads the C++ CPU kernels once per process, or says why it could not.

The build needs a C++ compiler. Without one (or on any build error) `load()` returns False
once, with one warning, and callers use their pure-torch reference paths.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import torch

logger = logging.getLogger("loomlm.kernels")

_SOURCES = [Path(__file__).with_name("paged_decode.cpp")]
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


def _build() -> bool:
    from torch.utils import cpp_extension

    start = time.perf_counter()
    logger.info("loading the C++ CPU kernels (a first build on a machine takes ~20 s)")
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
    _register_fakes()
    seconds = time.perf_counter() - start
    if seconds > 2:
        logger.info("built the C++ CPU kernels in %.1f s (cached for later starts)", seconds)
    return True


def _register_fakes() -> None:
    """Shapes for torch.compile's tracing: the kernels are opaque calls inside a graph."""

    @torch.library.register_fake("loomlm_cpu::paged_decode")
    def _paged_decode_fake(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        slots: torch.Tensor,
        lo: torch.Tensor,
        hi: torch.Tensor,
        scale: float,
        chunk: int,
    ) -> torch.Tensor:
        return torch.empty_like(q)
