"""`python -m loomlm.bench quant`: weight-only quantization, measured in one run.

Speed on the benchmark model (random weights, hidden 768, 12 layers, vocab 32000): loomlm's
unquantized and int8 engines one after the other, and llama.cpp's q8_0 file of the same model
when given (`--llama-cpp-bin`, `--gguf q8_0=PATH`), B prompts of 128 ids, 128 new tokens,
greedy, warm e2e tok/s; weight memory. Accuracy on the built-in TinyStories model: held-out
perplexity (runtime/assets/heldout_stories.txt) and greedy agreement over 64 prompts x 64
tokens, unquantized against int8, in float32 and bfloat16.
"""

from __future__ import annotations

import argparse
import os
from functools import partial
from pathlib import Path
from typing import Any

from .bench_model import bench_model_dir
from .decode_sweep import NEW_TOKENS, Row, _around, _sizes_rows, bench_engine, run_llama_cpp


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtypes", default="bfloat16")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--schemes", default="none,int8")
    parser.add_argument("--llama-cpp-bin", default=None, help="directory with llama-batched-bench")
    parser.add_argument(
        "--gguf", action="append", default=[], metavar="NAME=PATH", help="e.g. q8_0=m-q8_0.gguf"
    )
    parser.add_argument("--skip-accuracy", action="store_true")


def _speed(
    model_dir: Path, dtype: str, scheme: str | None, sizes: list[int]
) -> tuple[list[Row], float]:
    from loomlm.runtime.executor.quantize import weight_bytes

    engine, generate = bench_engine(model_dir, dtype, scheme)
    label = f"{dtype}+{scheme}" if scheme else dtype
    rows = _around(lambda: _sizes_rows("loomlm", label, sizes, generate))
    mib = weight_bytes(engine.model) / 2**20
    engine.shutdown()
    return rows, mib


def _accuracy(dtype: str) -> dict[str, Any]:
    from loomlm.runtime import Engine
    from loomlm.runtime.engine.perplexity import HELDOUT_TEXT, perplexity

    sentences = [s.strip() for s in HELDOUT_TEXT.read_text().replace("\n", " ").split(". ")]
    prompts = [" ".join(s.split()[:4]) for s in sentences if len(s.split()) >= 4][:64]
    params = {"max_new_tokens": 64, "temperature": 0, "ignore_eos": True}
    out: dict[str, Any] = {"prompts": len(prompts)}
    runs = {}
    for scheme in (None, "int8"):
        with Engine(dtype=dtype, quantization=scheme) as engine:
            out[f"ppl {scheme or 'none'}"] = perplexity(engine)
            runs[scheme] = [o.output_ids for o in engine.generate(prompts, params)]
    same = sum(a == b for x, y in zip(runs[None], runs["int8"]) for a, b in zip(x, y))
    out["token agreement"] = same / sum(len(x) for x in runs[None])
    out["sequences identical"] = sum(x == y for x, y in zip(runs[None], runs["int8"]))
    return out


def main(args: argparse.Namespace) -> None:
    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model_dir = bench_model_dir()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows: list[Row] = []
    memory: dict[str, float] = {}
    for dtype in args.dtypes.split(","):
        for name in args.schemes.split(","):
            scheme = None if name == "none" else name
            got, mib = _speed(model_dir, dtype, scheme, sizes)
            rows += got
            memory[got[0].dtype] = mib
    ggufs = dict(g.split("=", 1) for g in args.gguf)
    if args.llama_cpp_bin:
        for name, path in ggufs.items():
            run = partial(
                run_llama_cpp,
                Path(args.llama_cpp_bin),
                Path(path),
                name,
                sizes,
                torch.get_num_threads(),
            )
            rows += [r for r in _around(run) if r.batch]
            memory[name] = Path(path).stat().st_size / 2**20
    print(f"\nwarm e2e tok/s, {NEW_TOKENS} new tokens after 128-token prompts (benchmark model)")
    print("| engine | weights MiB | " + " | ".join(f"b={b}" for b in sizes) + " | GB/s |")
    print("| --- | ---: | " + " | ".join("---:" for _ in sizes) + " | ---: |")
    for label in dict.fromkeys(r.dtype for r in rows):
        mine = {r.batch: r for r in rows if r.dtype == label}
        engine = next(r.engine for r in rows if r.dtype == label)
        cells = " | ".join(f"{mine[b].e2e_warm:.1f}" if b in mine else "-" for b in sizes)
        stream = next(iter(mine.values())).stream
        print(f"| {engine} {label} | {memory.get(label, 0):.0f} | {cells} | {stream or 0:.1f} |")
    if not args.skip_accuracy:
        print(
            "\naccuracy on the built-in model (held-out perplexity; greedy, 64 prompts x 64 tokens)"
        )
        for dtype in args.dtypes.split(","):
            print(dtype, _accuracy(dtype))
