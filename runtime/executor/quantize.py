"""Quantization at load (`quantization="int8"`): linear weights stored as int8, symmetric per
output channel, with one scale per output row; activations stay in the model's dtype between
layers (the VNNI kernel quantizes them inside its product only).

The projections inside the decoder layers are quantized, and an untied LM head unless
`quantization_keep_lm_head=True`; the embedding keeps the checkpoint's dtype (a lookup reads one row per
token). Measured on the benchmark model (bf16, untied 32000 x 768 head, VNNI kernel, four
alternating runs of separate processes on a VM whose speed swung 1.3x between them): the head
in int8 took the weights from 176 to 152 MiB and batches of 8 and 32 from 798-857 and
1156-1213 tok/s to 814-903 and 1194-1223; batch 1 swung 147-200 either way.

On AVX-512 VNNI the product is W8A8: each activation row is quantized on the fly (symmetric,
by its largest magnitude) and multiplied in int8; the built-in model's held-out perplexity
moved -0.05% (float32) and +0.27% (bfloat16), within the 1% the tests hold it to.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_kernels import int8_linear

logger = logging.getLogger("loomlm.engine")

SCHEMES = ("int8",)


def check_scheme(scheme: str | None) -> None:
    if scheme is not None and scheme not in SCHEMES:
        raise ValueError(
            f"quantization: {scheme!r} is not a supported scheme; expected one of "
            f"{', '.join(SCHEMES)} (or none)"
        )


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (q [N, K] int8, scale [N] float32), with
    weight ~= q * scale[:, None]; a row of zeros gets scale 1."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


# torch 2.13's CPU `_weight_int8pack_mm` crashes (SIGSEGV) when the inner dimension is not a
# multiple of 16 (seen at 168, 172, 180, 184; 144-240 in steps of 16 are fine): such weights
# get zero columns up to the next multiple, and the activations zeros to match.
K_MULTIPLE = 16


class Int8Linear(nn.Module):
    """`nn.Linear`'s forward over an int8 weight and per-row scales, on the product
    `cpu_kernels.int8_linear.mode` picks: our VNNI kernel (activations quantized per row on
    the fly, W8A8), our widening kernel (W8A16), or torch's `_weight_int8pack_mm`."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        dtype = linear.weight.dtype
        q, scale = quantize_int8(linear.weight)
        cpu = linear.weight.device.type == "cpu"
        self.mode = int8_linear.mode(dtype) if cpu else "torch"
        self.pad = 0
        wsum = None  # the VNNI kernel's per-output weight sums (int32)
        if self.mode == "torch":
            scale = scale.to(dtype)
            self.pad = -self.in_features % K_MULTIPLE
            if self.pad:
                q = F.pad(q, (0, self.pad))
        else:
            sums = q.sum(dim=1, dtype=torch.int32)
            q = int8_linear.pack_vnni(q) if self.mode == "vnni" else int8_linear.pack(q)
            padded = q.shape[0] * q.shape[2]
            scale = F.pad(scale, (0, padded - self.out_features))
            if self.mode == "vnni":
                wsum = F.pad(sums, (0, padded - self.out_features))
        # Buffers, so that torch.compile takes them as fixed-size module state.
        self.qweight: torch.Tensor
        self.scale: torch.Tensor
        self.wsum: torch.Tensor | None
        self.register_buffer("qweight", q.contiguous(), persistent=False)
        self.register_buffer("scale", scale.contiguous(), persistent=False)
        self.register_buffer("wsum", wsum, persistent=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.wsum is not None:
            return torch.ops.loomlm_cpu.int8_linear_vnni.default(
                x, self.qweight, self.scale, self.wsum, self.bias, self.out_features
            )
        if self.mode == "widen":
            return torch.ops.loomlm_cpu.int8_linear.default(
                x, self.qweight, self.scale, self.bias, self.out_features
            )
        rows = x.reshape(-1, self.in_features)
        if self.pad:
            rows = F.pad(rows, (0, self.pad))
        y = torch._weight_int8pack_mm(rows, self.qweight, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        """The weight this layer computes with, [out, in] in float32 (for tests)."""
        if self.mode == "torch":
            q = self.qweight[:, : self.in_features].float()
        else:
            q = int8_linear.unpack(self.qweight, self.out_features, self.in_features).float()
        return q * self.scale[: self.out_features].float()[:, None]


def quantize_linears(model: nn.Module, scheme: str | None, lm_head: bool = False) -> int:
    """Replace the decoder layers' `nn.Linear`s by quantized ones (none without a scheme),
    and with `lm_head` an untied LM head too; returns how many. Runs before the CPU packing
    (packed_linear), which then leaves these layers alone."""
    check_scheme(scheme)
    if scheme is None:
        return 0
    layers = getattr(model, "layers", None)
    if layers is None:
        raise ValueError("quantization: this model has no decoder layers to quantize")
    count = 0
    for parent in list(layers.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child))
                count += 1
    head = getattr(model, "lm_head", None)
    if lm_head and isinstance(head, nn.Linear):  # a tied head is the embedding: kept
        model.lm_head = Int8Linear(head)
        count += 1
    logger.info("%d linear layers quantized to %s", count, scheme)
    return count


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights as held: parameters and buffers, quantized or not."""
    tensors = list(model.parameters()) + list(model.buffers())
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if t.data_ptr() in seen:  # tied weights count once
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total
