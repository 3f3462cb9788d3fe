"""`python -m loomlm.runtime.bench radix`: the radix cache on vs off, and chunked prefill on vs
off, on the benchmark model, in one run.

Each workload runs on a fresh engine per setting (a cold cache), after a short warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from typing import Any

from . import machine_load
from .bench_model import bench_model_dir
from .decode_stall import StallResult, decode_stall
from .sharing_workloads import SharingResult, few_shot, multi_turn, tree_of_thought

WORKLOADS: dict[str, tuple[str, Callable[[Any], SharingResult]]] = {
    "few-shot": ("64 requests, shared 1,024-token prefix, 32-token suffixes, 32 out", few_shot),
    "multi-turn": ("16 chats x 4 turns, whole history resent each turn, 32 out", multi_turn),
    "tree": ("tree of thought: 256-token question, 3 levels x 3 branches, 32 out", tree_of_thought),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only",
        default="few-shot,multi-turn,tree,stall",
        help="comma-separated subset of: few-shot, multi-turn, tree, stall",
    )
    parser.add_argument(
        "--chunk-sizes",
        default="32,64",
        help="chunked_prefill_size values to measure in the decode-stall test (plus 'off')",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: all cores)"
    )
    parser.add_argument(
        "--model", default=None, help="checkpoint dir (default: the random-weight bench model)"
    )
    parser.add_argument("--json", default=None, help="also write the results to this file")


def _engine(model_dir: Any, **kwargs: Any) -> Any:
    from loomlm.runtime import Engine

    engine = Engine(
        model_dir,
        dtype="float32",
        device="cpu",
        skip_tokenizer_init=True,
        max_total_tokens=96 * 1024,
        context_length=4096,  # the decode-stall prompt is 2,048 tokens plus output
        **kwargs,
    )
    # warm-up: the first steps of a process are slower (allocator, kernel selection)
    engine.generate(
        input_ids=[[1] + [7] * 40, [1] + [9] * 20], sampling_params={"max_new_tokens": 4}
    )
    engine.flush_cache()
    return engine


def _log(label: str, text: str, load: str) -> None:
    print(f"  .. {label}: {text} ({load})", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = bench_model_dir() if args.model is None else args.model
    only = set(args.only.split(","))
    print(
        f"model: {model_dir} (float32), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    rows: list[dict[str, Any]] = []
    for key, (name, workload) in WORKLOADS.items():
        if key not in only:
            continue
        results = {}
        for cache in (True, False):
            engine = _engine(model_dir, disable_radix_cache=not cache)
            before = machine_load.sample()
            res = workload(engine)
            load = machine_load.describe(before, machine_load.sample())
            engine.shutdown()
            label = "cache on " if cache else "cache off"
            _log(
                f"{key}, {label}", f"{res.tokens_per_s:.1f} out tok/s in {res.seconds:.1f} s", load
            )
            results[cache] = (res, load)
        on, off = results[True][0], results[False][0]
        print(f"== {name}: {on.requests} requests, {on.prompt_tokens} prompt tokens sent")
        for cache in (True, False):
            res, load = results[cache]
            print(
                f"   cache {'on ' if cache else 'off'}: {res.seconds:7.1f} s  "
                f"{res.requests / res.seconds:6.2f} req/s  {res.tokens_per_s:7.1f} out tok/s  "
                f"hit rate {res.hit_rate:6.1%}  ({load})"
            )
        print(f"   speed-up with the cache: {off.seconds / on.seconds:.2f}x")
        rows.append(
            {
                "workload": key,
                "seconds_cache_on": on.seconds,
                "seconds_cache_off": off.seconds,
                "speedup": off.seconds / on.seconds,
                "hit_rate": on.hit_rate,
            }
        )

    if "stall" in only:
        sizes = [-1] + [int(c) for c in args.chunk_sizes.split(",")]
        stalls: list[tuple[int, StallResult, str]] = []
        for size in sizes:
            engine = _engine(model_dir, chunked_prefill_size=size)
            before = machine_load.sample()
            res = decode_stall(engine)
            load = machine_load.describe(before, machine_load.sample())
            engine.shutdown()
            _log(f"stall, chunk {size}", f"p99/median {res.p99_over_median:.2f}", load)
            stalls.append((size, res, load))
        print(
            "== 16 requests decoding (prompt 128) when a 2,048-token prompt arrives: "
            "inter-token latency of the decoders"
        )
        for size, res, load in stalls:
            label = "no chunking" if size == -1 else f"chunk {size}"
            print(
                f"   {label:<12}: undisturbed median {res.undisturbed_median * 1e3:6.1f} ms; "
                f"from the arrival on: median {res.median * 1e3:6.1f} ms, "
                f"p99 {res.p99 * 1e3:7.1f} ms ({res.p99_over_median:.2f}x undisturbed), "
                f"max {res.max * 1e3:7.1f} ms; long prompt's first token after "
                f"{res.long_prompt_ttft:.2f} s  ({res.samples} gaps, {load})"
            )
            rows.append(
                {
                    "workload": "decode-stall",
                    "chunked_prefill_size": size,
                    "itl_undisturbed_median_ms": res.undisturbed_median * 1e3,
                    "itl_median_ms": res.median * 1e3,
                    "itl_p99_ms": res.p99 * 1e3,
                    "itl_max_ms": res.max * 1e3,
                    "long_prompt_ttft_s": res.long_prompt_ttft,
                }
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
