"""The C++ linear kernel over column-blocked weights (blocked_linear.cpp), seen from Python.

`supports(dtype)` says whether this process can run it: the kernels built, and the build
targets AVX-512 (float32), AVX-512 BF16 (bfloat16) or AVX2 with FMA (both; bfloat16 widened
in registers). Elsewhere the engine keeps oneDNN's packed weights (packed_linear.py), as it
does everywhere with LOOMLM_LINEAR_KERNEL=onednn (for A/B measurements).
"""

from __future__ import annotations

import functools
import os

import torch

from . import build

_DTYPE_BITS = {torch.float32: 1, torch.bfloat16: 2}


@functools.cache
def _supported_bits() -> int:
    if not build.load():
        return 0
    bits = int(torch.ops.loomlm_cpu.blocked_linear_dtypes())
    _register_fake()
    return bits


def supports(dtype: torch.dtype) -> bool:
    if os.environ.get("LOOMLM_LINEAR_KERNEL", "") == "onednn":
        return False
    return bool(_supported_bits() & _DTYPE_BITS.get(dtype, 0))


def pack(weight: torch.Tensor) -> torch.Tensor:
    """The weight [out, in] in the kernel's layout: a new tensor, the input is not kept."""
    return torch.ops.loomlm_cpu.pack_blocked_weight(weight.detach())


def unpack(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """The plain [out, in] weight back from its packed form (a copy)."""
    blocks, pairs, block_n, pair = packed.shape
    plain = packed.permute(0, 2, 1, 3).reshape(blocks * block_n, pairs * pair)
    return plain[:out_features, :in_features].contiguous()


def _register_fake() -> None:
    # Shapes for torch.compile's tracing: the op is an opaque call inside the compiled graph.
    @torch.library.register_fake("loomlm_cpu::blocked_linear")
    def _shape(
        x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int
    ) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], out_features))
