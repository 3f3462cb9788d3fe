"""`python -m loomlm.bench attention`: decode attention over the paged pool against the
memory bandwidth measured in the same run.

One query per request (the benchmark model's 12 heads of 64), B requests with L keys each in
a pool of B x L + 64 slots. Bytes moved are the keys and values each request attends to, read
once. Slots are laid out as the engine allocates them for requests that arrive and grow
together (runs in order: "contiguous") and, as a worst case, shuffled across the pool
("scattered"). The portable reference (gather into a padded block + SDPA) is printed beside
the C++ kernel for the short contexts, where it does not take minutes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from . import machine_load

HEADS, HEAD_DIM = 12, 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--shapes", default="1x150,8x200,32x1024,32x2048,32x4096,1x4096")
    parser.add_argument("--kv-heads", type=int, default=HEADS)


def _seconds(fn: Callable[..., object], *args: object, repeat: int = 10) -> float:
    fn(*args)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(args: argparse.Namespace) -> None:
    import torch
    from loomlm.runtime.executor.attention.paged_decode import (
        kernel_available,
        paged_decode,
        paged_decode_reference,
    )

    if not kernel_available(torch.device("cpu"), HEAD_DIM):
        raise SystemExit("the C++ CPU kernels did not build on this machine")
    data = torch.ones(128 << 20)
    stream = data.numel() * 4 / _seconds(data.sum, repeat=5) / 1e9
    del data
    before = machine_load.sample()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; sum over 512 MB streams {stream:.1f} GB/s"
    )
    print(
        f"{'dtype':<9} {'B x L':>9} {'slots':>11} {'kernel us':>10} {'GB/s':>6} {'of stream':>9} {'reference us':>13}"
    )
    with torch.inference_mode():
        for dtype in (getattr(torch, d) for d in args.dtypes.split(",")):
            for shape in args.shapes.split(","):
                batch, length = (int(x) for x in shape.split("x"))
                total = batch * length + 64
                kv_heads = args.kv_heads
                k = torch.randn(total, kv_heads, HEAD_DIM).to(dtype)
                v = torch.randn(total, kv_heads, HEAD_DIM).to(dtype)
                q = torch.randn(batch, HEADS, HEAD_DIM).to(dtype)
                lo = torch.zeros(batch, dtype=torch.int64)
                hi = torch.full((batch,), length, dtype=torch.int64)
                moved = 2 * batch * length * kv_heads * HEAD_DIM * k.element_size()
                for layout in ("contiguous", "scattered"):
                    order = torch.arange(total) if layout == "contiguous" else torch.randperm(total)
                    slots = order[: batch * length].view(batch, length).contiguous()
                    t = _seconds(paged_decode, q, k, v, slots, lo, hi, 0.125)
                    ref = "-"
                    if batch * length <= 8 * 200:
                        t_ref = _seconds(paged_decode_reference, q, k, v, slots, lo, hi, 0.125)
                        ref = f"{t_ref * 1e6:.0f}"
                    rate = moved / t / 1e9
                    print(
                        f"{str(dtype).split('.')[1]:<9} {shape:>9} {layout:>11} {t * 1e6:10.0f} {rate:6.1f} {rate / stream:9.0%} {ref:>13}",
                        flush=True,
                    )
    print(f"({machine_load.describe(before, machine_load.sample())})")
