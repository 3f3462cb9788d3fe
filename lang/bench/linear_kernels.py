"""`python -m loomlm.bench kernels`: how fast each linear-layer kernel torch offers streams
the benchmark model's weights on this CPU, against the machine's own streaming speed.

The 48 projections of the benchmark model (hidden 768, 12 layers) as distinct weights, so
nothing stays in cache; for each dtype and batch size, the GB/s of weights read per second
(best of `--repeats`): plain `F.linear`, MKL's packed GEMM (f32 only), oneDNN's packed
weights in its one-row and 32-row layouts, and our column-blocked C++ kernel (what the engine
uses on CPU where it runs, see runtime/executor/packed_linear.py). The roofline is a sum over
512 MB in the same process.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from loomlm.runtime.executor.cpu_kernels import blocked_linear
from loomlm.runtime.executor.packed_linear import onednn_packing_works

# (out, in) of one layer's projections: qkv, o, gate_up, down
LAYER = [(2304, 768), (768, 768), (4096, 768), (768, 2048)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,256")
    parser.add_argument("--repeats", type=int, default=5)


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    block = torch.empty((512 << 20) // 4).uniform_()
    roofline = block.numel() * 4 / best_seconds(block.sum, args.repeats) / 1e9
    print(f"streaming roofline (sum over 512 MB): {roofline:.1f} GB/s")
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    print(f"{'dtype':9} {'batch':>5} {'kernel':29} {'GB/s':>6} {'of roofline':>11}")
    for dtype in (torch.float32, torch.bfloat16):
        weights = [torch.randn(o, i).to(dtype) * 0.02 for o, i in LAYER * args.layers]
        nbytes = sum(w.numel() * w.element_size() for w in weights)
        # oneDNN has no packed bfloat16 product on CPUs without AVX-512 (or AVX-NE-CONVERT)
        with_onednn = onednn_packing_works(dtype)
        onednn = [torch.ops.mkldnn._reorder_linear_weight(w, 1) for w in weights if with_onednn]
        many = [torch.ops.mkldnn._reorder_linear_weight(w, 32) for w in weights if with_onednn]
        blocked = (
            [blocked_linear.pack(w) for w in weights] if blocked_linear.supports(dtype) else []
        )
        for b in sizes:
            xs = {i: torch.randn(b, i).to(dtype) for _, i in LAYER}
            kernels: dict[str, Callable[[], object]] = {"F.linear": partial(_plain, weights, xs)}
            if with_onednn:
                kernels["oneDNN packed, 1-row layout"] = partial(_onednn, weights, onednn, xs)
                kernels["oneDNN packed, 32-row layout"] = partial(_onednn, weights, many, xs)
            if blocked:
                kernels["blocked (ours)"] = partial(_blocked, weights, blocked, xs)
            if dtype == torch.float32:
                mkl = [torch.ops.mkl._mkl_reorder_linear_weight(w, b) for w in weights]
                kernels["MKL packed (_mkl_linear)"] = partial(_mkl, weights, mkl, xs, b)
            for name, run in kernels.items():
                rate = nbytes / best_seconds(run, args.repeats) / 1e9
                print(
                    f"{str(dtype).removeprefix('torch.'):9} {b:5d} {name:29} {rate:6.1f} "
                    f"{rate / roofline:10.0%}",
                    flush=True,
                )


Inputs = dict[int, torch.Tensor]  # by input width


def _plain(weights: list[torch.Tensor], xs: Inputs) -> list[torch.Tensor]:
    return [F.linear(xs[w.shape[1]], w) for w in weights]


def _onednn(
    weights: list[torch.Tensor], packed: list[torch.Tensor], xs: Inputs
) -> list[torch.Tensor]:
    return [
        torch.ops.mkldnn._linear_pointwise(xs[w.shape[1]], p, None, "none", [], "")
        for w, p in zip(weights, packed)
    ]


def _blocked(
    weights: list[torch.Tensor], packed: list[torch.Tensor], xs: Inputs
) -> list[torch.Tensor]:
    return [
        torch.ops.loomlm_cpu.blocked_linear(xs[w.shape[1]], p, None, w.shape[0])
        for w, p in zip(weights, packed)
    ]


def _mkl(
    weights: list[torch.Tensor], packed: list[torch.Tensor], xs: Inputs, batch: int
) -> list[torch.Tensor]:
    return [
        torch.ops.mkl._mkl_linear(xs[w.shape[1]], p, w, None, batch)
        for w, p in zip(weights, packed)
    ]
