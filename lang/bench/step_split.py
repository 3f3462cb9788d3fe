"""`python -m loomlm.bench steps`: where a decode step's time goes, at several batch sizes.

B prompts of 128 ids, 128 new tokens each (greedy, EOS ignored), on the benchmark model. Each
part of the step is timed by wrapping the method that does it, on the engine thread:
schedule (`Scheduler.schedule`), inputs (`ModelRunner._build_batch` and the attention
backend's `prepare`), forward (the model's layers), logits + sample (`logits` and the
sampler; the one host sync is here), output processing (`Scheduler.process`). "host" is what
is neither forward nor logits + sample. Warm: each size runs once before it is measured.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from .bench_model import bench_model_dir

PARTS = ("schedule", "inputs", "forward", "logits + sample", "output processing")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument(
        "--enforce-eager", action="store_true", help="op by op, no compiled forward graph"
    )
    parser.add_argument("--quantization", default=None, help="e.g. int8 (weight quantization)")


def _timed(spent: dict[str, float], part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[part] += time.perf_counter() - start

    return run


def main(args: argparse.Namespace) -> None:
    from ..runtime import Engine

    engine = Engine(
        bench_model_dir(), dtype=args.dtype, device="cpu", skip_tokenizer_init=True,
        max_total_tokens=64 * 1024, enforce_eager=args.enforce_eager,
        quantization=args.quantization,
    )  # fmt: skip
    spent: dict[str, float] = defaultdict(float)
    runner, sched, model = engine.runner, engine.scheduler, engine.model
    mode = "compiled graph" if runner.model_step.compiled else "eager"
    sched.schedule = _timed(spent, "schedule", sched.schedule)
    sched.process = _timed(spent, "output processing", sched.process)
    runner._build_batch = _timed(spent, "inputs", runner._build_batch)
    runner.attention.prepare = _timed(spent, "inputs", runner.attention.prepare)
    runner.model_step = _timed(spent, "forward", runner.model_step)
    model.logits = _timed(spent, "logits + sample", model.logits)
    runner.sampler = _timed(spent, "logits + sample", runner.sampler)
    new = args.new_tokens
    params = {"max_new_tokens": new, "min_new_tokens": new, "temperature": 0, "ignore_eos": True}
    print(
        f"{args.dtype}, {mode}, 128-token prompts, {new} new tokens; ms per step (share of the step)"
    )
    print(
        f"{'batch':>5} {'tok/s':>7} {'step':>7}  "
        + "  ".join(f"{p:>20}" for p in PARTS)
        + f"  {'host':>12}"
    )
    for b in (int(x) for x in args.batch_sizes.split(",")):
        prompts = [[11 + i] * 128 for i in range(b)]
        engine.generate(input_ids=prompts, sampling_params=params)  # warm
        spent.clear()
        steps_before = engine.stats()["num_steps"]
        start = time.perf_counter()
        engine.generate(input_ids=[[12 + i] * 128 for i in range(b)], sampling_params=params)
        wall = time.perf_counter() - start
        steps = engine.stats()["num_steps"] - steps_before
        step = wall / steps
        host = step - (spent["forward"] + spent["logits + sample"]) / steps
        cells = [f"{1000 * spent[p] / steps:8.2f} ({spent[p] / steps / step:5.1%})" for p in PARTS]
        print(
            f"{b:5d} {b * new / wall:7.1f} {1000 * step:7.2f}  " + "  ".join(f"{c:>20}" for c in cells)
            + f"  {1000 * host:5.2f} ({host / step:4.1%})",
            flush=True,
        )  # fmt: skip
    engine.shutdown()
