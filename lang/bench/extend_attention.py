"""`python -m loomlm.bench extend`: prompt (extend) attention, the C++ kernel against torch's
scaled_dot_product_attention on the same inputs.

The benchmark model's 12 heads of 64; each shape is R requests of E new tokens over a context
of S (E = S: a whole prompt; E < S: a chunk after a cached prefix). The kernel reads keys and
values from their pool slots; SDPA gets each request's context as a dense view of the pool
(the best case of the engine's SDPA path: slots in one ascending run) and, for chunks over a
prefix, the shifted causal mask. FLOPs are the causal products' (4 x D per visible
query-key pair), so both columns count the same work.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from . import machine_load

HEADS, HEAD_DIM = 12, 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument(
        "--shapes",
        default="1x1024x1024,1x2048x2048,8x128x128,4x512x512,1x64x4096",
        help="R x E x S: requests, new tokens each, context length each",
    )
    parser.add_argument("--kv-heads", type=int, default=HEADS)


def _seconds(fn: Callable[[], object], repeat: int = 10) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _one_shape(
    dtype: torch.dtype, reqs: int, new: int, context: int, kv_heads: int
) -> tuple[float, float, float]:
    """(kernel seconds, SDPA seconds, FLOPs) for R requests of `new` tokens over `context`."""
    import torch.nn.functional as F
    from loomlm.runtime.executor.attention.paged_extend import paged_extend, request_table

    scale = HEAD_DIM**-0.5
    k = torch.randn(reqs * context, kv_heads, HEAD_DIM).to(dtype)
    v = torch.randn_like(k)
    q = torch.randn(reqs * new, HEADS, HEAD_DIM).to(dtype)
    out = torch.empty_like(q)
    slots = torch.arange(reqs * context)
    starts = [i * new for i in range(reqs)]
    offsets = [i * context for i in range(reqs)]
    table = request_table(starts, [new] * reqs, offsets, [context] * reqs)
    mask = torch.arange(context)[None, :] <= torch.arange(context - new, context)[:, None]

    def kernel() -> None:
        paged_extend(q, k, v, slots, table, scale, None, out)

    def sdpa() -> None:
        for start, offset in zip(starts, offsets):
            keys = k[offset : offset + context].transpose(0, 1)[None]
            values = v[offset : offset + context].transpose(0, 1)[None]
            F.scaled_dot_product_attention(
                q[start : start + new].transpose(0, 1)[None],
                keys,
                values,
                attn_mask=None if new == context else mask,
                is_causal=new == context,
                scale=scale,
                enable_gqa=kv_heads != HEADS,
            )

    flops = 4.0 * HEAD_DIM * HEADS * reqs * int(mask.sum())
    return _seconds(kernel), _seconds(sdpa), flops


def main(args: argparse.Namespace) -> None:
    from loomlm.runtime.executor.attention.paged_extend import kernel_available

    if not kernel_available(torch.device("cpu"), HEAD_DIM):
        raise SystemExit("the C++ CPU kernels did not build on this machine")
    before = machine_load.sample()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"{'dtype':<9} {'R x E x S':>12} {'kernel ms':>10} {'GFLOP/s':>8} {'SDPA ms':>8} {'GFLOP/s':>8} {'speed-up':>8}"
    )
    with torch.inference_mode():
        for dtype in (getattr(torch, d) for d in args.dtypes.split(",")):
            for shape in args.shapes.split(","):
                reqs, new, context = (int(x) for x in shape.split("x"))
                t_kernel, t_sdpa, flops = _one_shape(dtype, reqs, new, context, args.kv_heads)
                print(
                    f"{str(dtype).split('.')[1]:<9} {shape:>12} {t_kernel * 1e3:10.2f} {flops / t_kernel / 1e9:8.0f} {t_sdpa * 1e3:8.2f} {flops / t_sdpa / 1e9:8.0f} {t_sdpa / t_kernel:7.2f}x",
                    flush=True,
                )
    print(f"({machine_load.describe(before, machine_load.sample())})")
