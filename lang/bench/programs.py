"""Program workloads: loomlm vs the same programs as plain sequential calls, cache off.

    python -m loomlm.bench programs [--models default,bench] [--workloads few_shot,json,tree,chat,react]

For each model, in one run: loomlm runs every workload's programs with `run_batch` on an
engine with its radix cache; the baseline runs the same programs one after another, each
primitive a blocking call that waits for the one before, on an engine with the cache off.
Both are greedy; the table gives programs/s, the ratio, and how many programs came out the
same.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import loomlm
from loomlm.backends.base import Backend, LogprobEntry, Meta
from loomlm.chat_template import ChatTemplate
from loomlm.runtime.sampling.generate_request import GenerateRequest

from .program_workloads import ALL, Workload


class SequentialBackend(Backend):
    """One call at a time: what a script calling the engine in a loop does."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self._lock = threading.Lock()

    @property
    def chat_template(self) -> ChatTemplate:
        return self.inner.chat_template

    def generate(self, request: GenerateRequest) -> tuple[str | list[str], Meta | list[Meta]]:
        with self._lock:
            return self.inner.generate(request)

    def generate_stream(self, request: GenerateRequest) -> Iterator[tuple[str, Meta]]:
        with self._lock:
            yield from self.inner.generate_stream(request)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.inner.tokenize(texts)

    def prompt_logprobs(self, input_ids: list[list[int]], start: int) -> list[list[LogprobEntry]]:
        with self._lock:
            return self.inner.prompt_logprobs(input_ids, start)


def _model(name: str) -> Any:
    if name == "default":
        return None
    from loomlm.bench.bench_model import bench_model_dir

    return bench_model_dir(with_tokenizer=True)


def _timed(run: Callable[[], list[loomlm.ProgramState]]) -> tuple[float, list[loomlm.ProgramState]]:
    start = time.perf_counter()
    states = run()
    return time.perf_counter() - start, states


def _batched(w: Workload, backend: Backend) -> list[loomlm.ProgramState]:
    return list(w.program.run_batch(w.arguments, temperature=0, backend=backend))


def _one_by_one(w: Workload, backend: Backend) -> list[loomlm.ProgramState]:
    return [w.program.run(**a, temperature=0, backend=backend) for a in w.arguments]


def _run_mode(model: Any, workloads: list[Workload], loom: bool) -> dict[str, tuple[float, list]]:
    from loomlm.runtime import Engine

    results = {}
    with Engine(model, disable_radix_cache=not loom) as engine:
        backend: Backend = loomlm.EngineBackend(engine)
        if not loom:
            backend = SequentialBackend(backend)
        for w in workloads:
            w.program.run(**w.arguments[0], temperature=0, backend=backend)  # warm-up
            before = engine.stats()
            if loom:
                engine.flush_cache()
                seconds, states = _timed(partial(_batched, w, backend))
            else:
                seconds, states = _timed(partial(_one_by_one, w, backend))
            errors = [s.error() for s in states if s.error() is not None]
            if errors:
                raise RuntimeError(f"{w.name}: {len(errors)} programs failed: {errors[0]}")
            results[w.name] = (seconds, [s.text() for s in states])
            after = engine.stats()
            computed = after["prompt_tokens"] - before["prompt_tokens"]
            queried = after["cache_query_tokens"] - before["cache_query_tokens"]
            hits = after["cache_hit_tokens"] - before["cache_hit_tokens"]
            print(
                f"  {w.name}: {seconds:.2f}s, {computed} prompt tokens computed, "
                f"{hits / max(queried, 1):.1%} of prompt tokens from the cache",
                flush=True,
            )
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        default="default,bench",
        help="default (TinyStories 260K) and/or bench (hidden 768, 12 layers)",
    )
    parser.add_argument("--workloads", default=",".join(ALL), help=f"of {', '.join(ALL)}")
    parser.add_argument("--programs", type=int, default=32, help="programs per workload")
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> None:
    rows = []
    for model_name in args.models.split(","):
        rng = random.Random(args.seed)
        workloads = [ALL[w](args.programs, rng) for w in args.workloads.split(",")]
        model = _model(model_name)
        print(f"== {model_name} model: loomlm (run_batch, radix cache)", flush=True)
        loom = _run_mode(model, workloads, loom=True)
        print(f"== {model_name} model: sequential calls, cache off", flush=True)
        base = _run_mode(model, workloads, loom=False)
        for w in workloads:
            (t_loom, texts_loom), (t_base, texts_base) = loom[w.name], base[w.name]
            n = len(w.arguments)
            same = sum(a == b for a, b in zip(texts_loom, texts_base))
            rows.append((model_name, w.name, n, n / t_base, n / t_loom, t_base / t_loom, same))
    print(
        f"\n{'model':8} {'workload':16} {'progs':>5} {'seq p/s':>9} {'loomlm p/s':>11} "
        f"{'ratio':>7} {'same':>6}"
    )
    for model_name, name, n, base_rate, loom_rate, ratio, same in rows:
        print(
            f"{model_name:8} {name:16} {n:5d} {base_rate:9.2f} {loom_rate:11.2f} "
            f"{ratio:6.1f}x {same:3d}/{n}"
        )
