"""The C++ column-blocked linear kernel computes x @ W^T + b as exactly as F.linear does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from loomlm.runtime.executor.cpu_kernels import blocked_linear


def _needs(dtype: torch.dtype) -> None:
    if not blocked_linear.supports(dtype):
        pytest.skip(f"the blocked kernel does not run {dtype} on this CPU / build")


def _errors(x, weight, bias, got):
    exact = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    plain = F.linear(x, weight, bias)  # torch's own product in the same dtype
    return (got.double() - exact).abs().max().item(), (plain.double() - exact).abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "in_features, out_features",
    [(96, 80), (97, 130), (1, 3), (256, 64)],  # odd K, N off the column blocks, K of one
)
# tiles of 6 rows (AVX-512, AVX2 float32) or 4 (AVX2 bfloat16), each tail, and 133 > 128
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 11, 133])
@pytest.mark.parametrize("with_bias", [False, True])
def test_blocked_linear_matches_f_linear(dtype, in_features, out_features, rows, with_bias):
    _needs(dtype)
    torch.manual_seed(rows * 1000 + in_features)
    weight = (torch.randn(out_features, in_features) * 0.1).to(dtype)
    bias = torch.randn(out_features).to(dtype) if with_bias else None
    x = torch.randn(rows, in_features).to(dtype)
    packed = blocked_linear.pack(weight)
    got = torch.ops.loomlm_cpu.blocked_linear(x, packed, bias, out_features)
    assert got.shape == (rows, out_features) and got.dtype == dtype
    err, torch_err = _errors(x, weight, bias, got)
    # within twice torch's own rounding error (float32: summation order; bfloat16: the output's
    # rounding), and never more than a rounding step of the output
    assert err <= max(2 * torch_err, 1e-5), (err, torch_err)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packing_keeps_every_weight_and_unpacks_exactly(dtype):
    _needs(dtype)
    weight = torch.randn(130, 97).to(dtype)
    packed = blocked_linear.pack(weight)
    block = packed.shape[2]  # 64 outputs with AVX-512, 16 with AVX2
    assert block in (16, 64) and packed.shape[0] == -(-130 // block)
    pairs = (97, 1) if dtype == torch.float32 else (49, 2)  # bfloat16 pairs k, zero padded
    assert (packed.shape[1], packed.shape[3]) == pairs
    assert torch.equal(blocked_linear.unpack(packed, 130, 97), weight)


def test_leading_dimensions_are_kept_and_mismatches_are_refused():
    _needs(torch.float32)
    weight = torch.randn(70, 48)
    packed = blocked_linear.pack(weight)
    x = torch.randn(2, 3, 48)
    got = torch.ops.loomlm_cpu.blocked_linear(x, packed, None, 70)
    assert got.shape == (2, 3, 70)
    assert torch.allclose(got, F.linear(x, weight), atol=1e-5)
    with pytest.raises(RuntimeError, match="dtype|BFloat16|Float"):
        torch.ops.loomlm_cpu.blocked_linear(x.double(), packed, None, 70)
    with pytest.raises(RuntimeError, match="features"):
        torch.ops.loomlm_cpu.blocked_linear(torch.randn(2, 47), packed, None, 70)
