"""Linear layers packed for a CPU kernel (ours or oneDNN's) compute what nn.Linear computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from loomlm.runtime.executor.cpu_kernels import blocked_linear
from loomlm.runtime.executor.packed_linear import (
    PackedLinear,
    can_pack,
    onednn_packing_works,
    pack_linears,
)
from torch import nn

needs_onednn = pytest.mark.skipif(
    not can_pack(torch.device("cpu"), torch.float32), reason="torch built without oneDNN"
)


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 7, 64])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("kernel", ["blocked", "onednn"])
def test_a_packed_linear_matches_nn_linear(dtype, rows, bias, kernel, monkeypatch):
    if kernel == "onednn":
        if not onednn_packing_works(dtype):  # bfloat16 needs AVX-512 (or AVX-NE-CONVERT)
            pytest.skip(f"this CPU's oneDNN has no packed {dtype} product")
        monkeypatch.setenv("LOOMLM_LINEAR_KERNEL", "onednn")
    elif not blocked_linear.supports(dtype):
        pytest.skip(f"the blocked kernel does not run {dtype} here")
    torch.manual_seed(rows)
    linear = nn.Linear(96, 80, bias=bias).to(dtype)
    x = torch.randn(rows, 96).to(dtype)
    with torch.inference_mode():
        want = linear(x)
        packed = PackedLinear(linear)
        got = packed(x)
        exact = F.linear(
            x.double(), linear.weight.double(), None if not bias else linear.bias.double()
        )
    assert packed.blocked == (kernel == "blocked")
    # oneDNN in float32 keeps a second layout for calls of several rows (packed_linear.py)
    assert (packed.packed_many is not None) == (kernel == "onednn" and dtype == torch.float32)
    assert got.shape == want.shape and got.dtype == want.dtype
    # as close to the exact product as torch's own (bfloat16: both round the same sums)
    torch_err = (want.double() - exact).abs().max().item()
    assert (got.double() - exact).abs().max().item() <= max(2 * torch_err, 1e-5)


@needs_onednn
def test_pack_linears_replaces_every_linear_and_keeps_the_function():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.SiLU(), nn.Sequential(nn.Linear(64, 16)))
    x = torch.randn(5, 32)
    with torch.inference_mode():
        want = model(x)
        assert pack_linears(model, min_bytes=0) == 2
        got = model(x)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert torch.allclose(got, want, atol=1e-5)


@needs_onednn
def test_only_layers_too_large_for_the_cache_are_packed():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(1024, 1024))
    assert pack_linears(model) == 1  # 16 KB stays plain; 4 MiB is packed
    assert isinstance(model[0], nn.Linear) and isinstance(model[1], PackedLinear)


def test_nothing_is_packed_where_onednn_does_not_apply():
    half = nn.Sequential(nn.Linear(8, 8)).half()
    assert pack_linears(half) == 0 and isinstance(half[0], nn.Linear)
    assert not can_pack(torch.device("cuda"), torch.float32)
