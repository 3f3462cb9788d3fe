"""Linear layers with their weights reordered once, at load time, into oneDNN's blocked
layout: how a CPU streams weights near memory bandwidth.

`F.linear` on a plain row-major weight reads it at about half of what this kind of CPU
streams. Measured on the benchmark model's 48 projections (2-core AMD EPYC, AVX-512, torch
2.13; `sum` streams 26.5 GB/s): at batch 1, f32 12.1 GB/s plain against 20.8 GB/s packed,
bf16 11.6 against 19.0; MKL's packed GEMM (`_mkl_linear`) reached 16.7 in f32 and fell
behind plain from batch 8 on. Packed oneDNN weights were faster at every row count measured
(1 to 512 rows: 0.8x the time for a 512-row prefill, 0.5x at 1-8 rows), with results within
2.5e-6 of `F.linear` in f32 and identical in bf16. The packing hint is one row: decode is
where weight streaming decides the step time.

Small layers stay plain: a packed call costs a fixed ~16-22 us, which a weight that fits in
cache never earns back (f32 at one row: 64x64 3.2 us plain against 22.1 packed, 256x256 10.5
against 29.9, 512x512 34.1 against 26.8; the built-in TinyStories model decoded at 300 tok/s
plain and 100-135 packed). Only weights of at least MIN_PACKED_BYTES are packed.

On a GPU, or a torch without oneDNN, or a dtype oneDNN does not take, layers stay as they
are (`pack_linears` returns 0).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("loomlm.engine")

PACKED_DTYPES = (torch.float32, torch.bfloat16)
MIN_PACKED_BYTES = 1 << 20
# oneDNN picks the blocked layout for the number of rows it is told to expect. In float32 the
# layout for one row is the fastest for one row and slow for more (the engine, A/B in one
# process: batch 1 29.8 tok/s with it against 24.3 with the 32-row layout; batch 8 138.8
# against 186.5, batch 32 342.9 against 418.2), so float32 layers keep both and pick per
# call, at twice the weights' memory. In bfloat16 one layout is as fast as the other at every
# size measured (41.2/308.7/703.9 against 45.1/303.3/659.2), and the one-row layout is kept.
ONE_ROW, MANY_ROWS = 1, 32
DUAL_LAYOUT_DTYPES = (torch.float32,)
_MKLDNN_MATMUL = torch.ops.mkldnn._linear_pointwise.default

# The packed product as an op of our own. Inductor lowers oneDNN's op only for weights it
# froze itself (it asserts the weight is a graph constant), so inside a compiled graph the
# product must be an opaque call; ~3 us of Python dispatch on a ~20 us call.
_lib = torch.library.Library("loomlm", "FRAGMENT")
_lib.define("packed_linear(Tensor x, Tensor packed, Tensor? bias, int out_features) -> Tensor")


def _packed_linear(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    return _MKLDNN_MATMUL(x, packed, bias, "none", [], "")


def _packed_linear_shape(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


# The packed weight is an MKLDNN tensor: a CPU-only registration would not be found for it.
_lib.impl("packed_linear", _packed_linear, "CompositeExplicitAutograd")
_lib.impl("packed_linear", _packed_linear_shape, "Meta")
# Looked up once: the op namespace's attribute lookup would otherwise run on every call.
_PACKED_MATMUL = torch.ops.loomlm.packed_linear.default


class PackedLinear(nn.Module):
    """`nn.Linear`'s forward over a weight packed for oneDNN. The packed weight is opaque (it
    cannot be read back as a matrix), so the layer keeps no plain copy of it."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, ONE_ROW)
        self.packed_many: torch.Tensor | None = None  # the layout for several rows, if kept
        if weight.dtype in DUAL_LAYOUT_DTYPES:
            self.packed_many = torch.ops.mkldnn._reorder_linear_weight(weight, MANY_ROWS)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under a compiled graph this branch is settled when tracing: the graphs are
        # specialised for one row and for two or more (model_step.py).
        packed = self.packed if self.packed_many is None or x.shape[0] == 1 else self.packed_many
        return _PACKED_MATMUL(x, packed, self.bias, self.out_features)


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cpu" and dtype in PACKED_DTYPES and torch.backends.mkldnn.is_available()


def pack_linears(model: nn.Module, min_bytes: int | None = None) -> int:
    """Replace every `nn.Linear` of `model` (on CPU, in a packable dtype) whose weight has at
    least `min_bytes` (default MIN_PACKED_BYTES) by a PackedLinear computing the same
    function; returns how many were packed."""
    if min_bytes is None:
        min_bytes = MIN_PACKED_BYTES
    first = next(model.parameters(), None)
    if first is None or not can_pack(first.device, first.dtype) or not _packing_works(first.dtype):
        return 0
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and _weight_bytes(child) >= min_bytes:
                setattr(parent, name, PackedLinear(child))
                count += 1
    return count


def _weight_bytes(linear: nn.Linear) -> int:
    return linear.weight.numel() * linear.weight.element_size()


def _packing_works(dtype: torch.dtype) -> bool:
    """One small product, packed and plain: a oneDNN build that cannot run this dtype fails
    here rather than under the first request."""
    try:
        weight = torch.randn(16, 8).to(dtype)
        x = torch.randn(3, 8).to(dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        got = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        return bool(torch.allclose(got.float(), F.linear(x, weight).float(), atol=1e-2))
    except (RuntimeError, NotImplementedError) as exc:
        logger.warning("oneDNN weight packing unavailable for %s (%s); using F.linear", dtype, exc)
        return False
