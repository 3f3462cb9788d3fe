"""Linear layers packed for oneDNN compute what nn.Linear computes."""

from __future__ import annotations

import pytest
import torch
from loomlm.runtime.executor.packed_linear import PackedLinear, can_pack, pack_linears
from torch import nn

needs_onednn = pytest.mark.skipif(
    not can_pack(torch.device("cpu"), torch.float32), reason="torch built without oneDNN"
)


@needs_onednn
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 0.0)])
@pytest.mark.parametrize("rows", [1, 7, 64])
@pytest.mark.parametrize("bias", [False, True])
def test_a_packed_linear_matches_nn_linear(dtype, atol, rows, bias):
    torch.manual_seed(rows)
    linear = nn.Linear(96, 80, bias=bias).to(dtype)
    x = torch.randn(rows, 96).to(dtype)
    with torch.inference_mode():
        want = linear(x)
        packed = PackedLinear(linear)
        got = packed(x)
    # float32 keeps a second layout for calls of several rows (packed_linear.py)
    assert (packed.packed_many is not None) == (dtype == torch.float32)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert (got.float() - want.float()).abs().max().item() <= atol


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
