"""`python -m loomlm.bench radix`: the radix cache on vs off, and chunked prefill on vs
off, on the benchmark model, in one run.

Each workload runs on a fresh engine per setting (a cold cache), after a short warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
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
        "--repeats",
        type=int,
        default=3,
        help="rounds of the decode-stall test; the settings take turns within a round",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: all cores)"
    )
    parser.add_argument(
        "--model", default=None, help="checkpoint dir (default: the random-weight bench model)"
    )
    parser.add_argument("--json", default=None, help="also write the results to this file")


def _engine(model_dir: Any, max_total_tokens: int = 96 * 1024, **kwargs: Any) -> Any:
    from loomlm.runtime import Engine

    engine = Engine(
        model_dir,
        dtype="float32",
        device="cpu",
        skip_tokenizer_init=True,
        max_total_tokens=max_total_tokens,
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
            after = machine_load.sample()
            load = machine_load.describe(before, after)
            cpu = after.ours - before.ours  # CPU seconds we got: steal time is not in them
            engine.shutdown()
            label = "cache on " if cache else "cache off"
            _log(
                f"{key}, {label}", f"{res.tokens_per_s:.1f} out tok/s in {res.seconds:.1f} s", load
            )
            results[cache] = (res, cpu, load)
        (on, on_cpu, _), (off, off_cpu, _) = results[True], results[False]
        print(f"== {name}: {on.requests} requests, {on.prompt_tokens} prompt tokens sent")
        for cache in (True, False):
            res, cpu, load = results[cache]
            print(
                f"   cache {'on ' if cache else 'off'}: {res.seconds:7.1f} s  "
                f"{res.requests / res.seconds:6.2f} req/s  {res.tokens_per_s:7.1f} out tok/s  "
                f"hit rate {res.hit_rate:6.1%}  CPU {cpu:7.1f} s  ({load})"
            )
        # On a shared VM the hypervisor may steal a different share of the CPU in each half;
        # the CPU time each half actually got is the steadier basis for the ratio.
        print(
            f"   speed-up with the cache: {off.seconds / on.seconds:.2f}x in wall time, "
            f"{off_cpu / on_cpu:.2f}x in CPU time"
        )
        rows.append(
            {
                "workload": key,
                "seconds_cache_on": on.seconds,
                "seconds_cache_off": off.seconds,
                "cpu_seconds_cache_on": on_cpu,
                "cpu_seconds_cache_off": off_cpu,
                "speedup": off.seconds / on.seconds,
                "speedup_cpu_time": off_cpu / on_cpu,
                "hit_rate": on.hit_rate,
            }
        )

    if "stall" in only:
        rows += _stall(
            model_dir, [-1] + [int(c) for c in args.chunk_sizes.split(",")], args.repeats
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


def _stall(model_dir: Any, sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    """The decode-stall test for each chunk size, `repeats` rounds, the sizes taking turns in
    each round so that a drift in the machine's speed touches them all alike."""
    engines = {size: _engine(model_dir, 16 * 1024, chunked_prefill_size=size) for size in sizes}
    runs: dict[int, list[tuple[StallResult, str]]] = {size: [] for size in sizes}
    for r in range(repeats):
        for size, engine in engines.items():
            before = machine_load.sample()
            res = decode_stall(engine)
            load = machine_load.describe(before, machine_load.sample())
            while not engine.flush_cache():  # the next round must not find the prompts cached
                time.sleep(0.05)
            _log(
                f"stall, round {r + 1}, chunk {size}", f"p99/median {res.p99_over_median:.2f}", load
            )
            runs[size].append((res, load))
    for engine in engines.values():
        engine.shutdown()

    rows = []
    print(
        "== 16 requests decoding (prompt 128) when a 2,048-token prompt arrives: "
        "inter-token latency of the decoders"
    )
    for size, results in runs.items():
        label = "no chunking" if size == -1 else f"chunk {size}"
        ratios = [res.p99_over_median for res, _ in results]
        print(
            f"   {label}: p99 during the long prefill / undisturbed median = "
            f"{statistics.median(ratios):.2f}x (median of {len(ratios)} rounds: "
            f"{', '.join(f'{x:.2f}' for x in ratios)})"
        )
        for res, load in results:
            print(
                f"      undisturbed median {res.undisturbed_median * 1e3:6.1f} ms; during the "
                f"long prefill: median {res.median * 1e3:6.1f} ms, p99 {res.p99 * 1e3:7.1f} ms, "
                f"max {res.max * 1e3:7.1f} ms; long prompt's first token after "
                f"{res.long_prompt_ttft:5.2f} s  ({res.samples} gaps; {load})"
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
    return rows
