"""The C++ int8 linear kernels (int8_linear.cpp), seen from Python.

`mode(dtype)` says which runs in this process: "vnni" (AVX-512 VNNI: the activations are
quantized per row on the fly and multiplied in int8), "widen" (AVX-512 or AVX2 with FMA: the
int8 weight widened to float32 in registers), or "torch" (torch's `_weight_int8pack_mm`,
quantize.py). LOOMLM_INT8_KERNEL=widen or =torch picks a slower one, for A/B measurements.
"""

from __future__ import annotations

import functools
import os

import torch

from . import build


@functools.cache
def _built() -> int:
    """Bit 0: the widening kernel runs; bit 1: the VNNI one too."""
    if not build.load():
        return 0
    bits = int(torch.ops.loomlm_cpu.int8_linear_supported())
    if not bits:
        return 0

    @torch.library.register_fake("loomlm_cpu::int8_linear_vnni")
    def _vnni_shape(
        x: torch.Tensor,
        packed: torch.Tensor,
        scale: torch.Tensor,
        wsum: torch.Tensor,
        bias: torch.Tensor | None,
        out_features: int,
    ) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], out_features))

    @torch.library.register_fake("loomlm_cpu::int8_linear")
    def _shape(
        x: torch.Tensor,
        packed: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
        out_features: int,
    ) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], out_features))

    return bits


def mode(dtype: torch.dtype) -> str:
    """ "vnni", "widen" or "torch": the product an int8 layer of activations `dtype` runs."""
    asked = os.environ.get("LOOMLM_INT8_KERNEL", "")
    if asked == "torch" or dtype not in (torch.float32, torch.bfloat16):
        return "torch"
    bits = _built()
    if bits & 2 and asked != "widen":
        return "vnni"
    return "widen" if bits & 1 else "torch"


def supports(dtype: torch.dtype) -> bool:
    """Whether one of the C++ kernels runs `dtype` here."""
    return mode(dtype) != "torch"


def pack(q: torch.Tensor) -> torch.Tensor:
    """An int8 weight [out, in] in the kernel's layout [blocks, in, BLOCK_N] (a new tensor)."""
    return torch.ops.loomlm_cpu.pack_int8_weight(q.detach())


def pack_vnni(q: torch.Tensor) -> torch.Tensor:
    """An int8 weight [out, in] in the VNNI layout [blocks, in/4, BLOCK_N, 4] (a new tensor)."""
    return torch.ops.loomlm_cpu.pack_int8_vnni_weight(q.detach())


def unpack(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """The int8 weight [out, in] back from either packed form (a copy)."""
    if packed.dim() == 4:  # VNNI: [blocks, quads, BLOCK_N, 4]
        blocks, quads, block_n, four = packed.shape
        plain = packed.permute(0, 2, 1, 3).reshape(blocks * block_n, quads * four)
    else:
        blocks, k, block_n = packed.shape
        plain = packed.permute(0, 2, 1).reshape(blocks * block_n, k)
    return plain[:out_features, :in_features].contiguous()
