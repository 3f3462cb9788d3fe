"""Linear layers with their weights reordered once, at load time, into a layout a CPU streams
near memory bandwidth.

Two kernels, chosen per dtype when the model loads:

- **Column-blocked weights and our vector loop** (cpu_kernels/blocked_linear.cpp), where the
  kernels built and the CPU has AVX-512 (float32), AVX-512 BF16 (bfloat16), or AVX2 with FMA
  (both). Measured on the benchmark model's 48 projections (`python -m loomlm.bench kernels`,
  torch 2.13). On a 2-core AMD EPYC with AVX-512 (`sum` streaming ~31 GB/s): 1 row, f32 33
  GB/s against oneDNN's 26, bf16 25 against 17-18; 8 rows, f32 31-37 against 24, bf16 24-26
  against 18-19; level with oneDNN from 16 rows up to 1,024-row prefills, where both are
  bound by arithmetic. On a 2-core AMD EPYC with AVX2 only (Zen 3, `sum` ~28 GB/s): f32 1 row
  24-28 against oneDNN's 21, 8 rows 20-22 against 11.5, 256 rows 1.0-1.2 against 1.0; oneDNN
  has no packed bfloat16 product on such a CPU, and `F.linear` reads bf16 at 14 GB/s for 1
  row and 2.2 for 8, against our 21-29 and 13. One layout serves every row count, so float32
  keeps one copy of its weights, not oneDNN's two.
- **oneDNN's packed weights** elsewhere. `F.linear` on a plain row-major weight reads it at
  about half of what the CPU streams (f32 12.1 GB/s plain against 20.8 packed at one row,
  bf16 11.6 against 19.0), and MKL's packed GEMM fell behind plain from 8 rows on. oneDNN picks
  its blocked layout for the number of rows it is told to expect; in float32 the one-row layout
  is fastest for one row and slow for more (the engine, A/B in one process: batch 1 29.8 tok/s
  with it against 24.3 with the 32-row layout; batch 8 138.8 against 186.5), so float32 layers
  keep both and pick per call. In bfloat16 the two are level and one is kept.

Small layers stay plain: a packed oneDNN call costs a fixed ~16-22 us, which a weight that fits
in cache never earns back (the built-in TinyStories model decoded at 300 tok/s plain and
100-135 packed). Only weights of at least MIN_PACKED_BYTES are packed.

On a GPU, or a torch without oneDNN and without the kernels, or a dtype neither takes, layers
stay as they are (`pack_linears` returns 0).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_kernels import blocked_linear

logger = logging.getLogger("loomlm.engine")

PACKED_DTYPES = (torch.float32, torch.bfloat16)
MIN_PACKED_BYTES = 1 << 20
# oneDNN's layouts: the hint is the number of rows a call is expected to have (see above).
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
    """`nn.Linear`'s forward over a weight packed once for a CPU kernel: the column-blocked
    layout of our own kernel where it runs, else oneDNN's (opaque: it cannot be read back as
    a matrix). The layer keeps no plain copy of the weight."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach()
        self.blocked = blocked_linear.supports(weight.dtype)
        many = None  # oneDNN's layout for several rows, where it is kept
        if self.blocked:
            packed = blocked_linear.pack(weight)
        else:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, ONE_ROW)
            if weight.dtype in DUAL_LAYOUT_DTYPES:
                many = torch.ops.mkldnn._reorder_linear_weight(weight, MANY_ROWS)
        # Buffers, not plain attributes: torch.compile takes a module's buffers as fixed-size
        # and would otherwise treat the packed shape as dynamic, tying a packed dimension of 2
        # to a 2-token warm-up step and compiling again on the first request.
        self.packed: torch.Tensor
        self.packed_many: torch.Tensor | None
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("packed_many", many, persistent=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under a compiled graph these branches are settled when tracing: the graphs are
        # specialised for one row and for two or more (model_step.py).
        if self.blocked:
            return torch.ops.loomlm_cpu.blocked_linear.default(
                x, self.packed, self.bias, self.out_features
            )
        packed = self.packed if self.packed_many is None or x.shape[0] == 1 else self.packed_many
        return _PACKED_MATMUL(x, packed, self.bias, self.out_features)


def make_row_invariant(model: nn.Module) -> None:
    """Batch-invariant mode: every linear layer, whatever its size, and a tied LM head on our
    column-blocked kernel, whose output rows do not depend on how many rows a call has (each
    row's sums run in the same order). ValueError where that kernel does not run."""
    first = next(model.parameters())
    if not blocked_linear.supports(first.dtype) or first.device.type != "cpu":
        raise ValueError(
            f"deterministic: needs the C++ linear kernel, which does not run {first.dtype} on "
            f"{first.device.type} here"
        )
    pack_linears(model, min_bytes=0)
    embed = getattr(model, "embed_tokens", None)
    if getattr(model, "lm_head", True) is None and isinstance(embed, nn.Embedding):
        head = nn.Linear(embed.embedding_dim, embed.num_embeddings, bias=False)
        head.weight = embed.weight
        model.tied_head = PackedLinear(head)


def unpack_onednn(layer: PackedLinear) -> torch.Tensor:
    """The plain [out, in] weight of a oneDNN-packed layer. oneDNN's layout is opaque, so it
    is read back through the layer's own product with the identity: every output is one
    weight times 1 plus zeros, which is exact in any dtype."""
    eye = torch.eye(layer.in_features, dtype=layer.packed.dtype)
    return _PACKED_MATMUL(eye, layer.packed, None, layer.out_features).t().contiguous()


def repack_onednn(layer: PackedLinear, weight: torch.Tensor) -> None:
    """Replace a oneDNN-packed layer's weight by `weight` [out, in], in the same layouts."""
    layer.packed = torch.ops.mkldnn._reorder_linear_weight(weight, ONE_ROW)
    if layer.packed_many is not None:
        layer.packed_many = torch.ops.mkldnn._reorder_linear_weight(weight, MANY_ROWS)


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    if device.type != "cpu" or dtype not in PACKED_DTYPES:
        return False
    return blocked_linear.supports(dtype) or torch.backends.mkldnn.is_available()


def pack_linears(model: nn.Module, min_bytes: int | None = None) -> int:
    """Replace every `nn.Linear` of `model` (on CPU, in a packable dtype) whose weight has at
    least `min_bytes` (default MIN_PACKED_BYTES) by a PackedLinear computing the same
    function; returns how many were packed."""
    if min_bytes is None:
        min_bytes = MIN_PACKED_BYTES
    first = next(model.parameters(), None)
    if first is None or not can_pack(first.device, first.dtype):
        return 0
    if not blocked_linear.supports(first.dtype) and not onednn_packing_works(first.dtype):
        return 0
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and _weight_bytes(child) >= min_bytes:
                setattr(parent, name, PackedLinear(child))
                count += 1
    if count:
        logger.info("%d linear layers packed for the CPU linear kernel", count)
    return count


def _weight_bytes(linear: nn.Linear) -> int:
    return linear.weight.numel() * linear.weight.element_size()


def onednn_packing_works(dtype: torch.dtype) -> bool:
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
