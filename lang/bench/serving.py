"""`python -m loomlm.bench serving`: a serving benchmark in the spirit of SGLang's
bench_serving. Streams random-id requests to `loomlm serve` at each concurrency (or request
rate), and, in the same run and interleaved with it, the same requests to an in-process
Engine with the same settings: the difference is what the HTTP layer costs.

Prints request throughput, output tokens/s, TTFT, ITL and end-to-end latency per run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import machine_load
from .bench_model import bench_model_dir
from .serving_client import BenchRequest, RequestTiming, engine_sender, http_sender, run_all


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", help="benchmark this running server instead of starting one")
    parser.add_argument("--backend", choices=["native", "openai"], default="native")
    parser.add_argument("--model", help="checkpoint (default: the random-weight bench model)")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated levels")
    parser.add_argument(
        "--num-prompts", type=int, default=None, help="per level (default: 2 x level, >= 8)"
    )
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument(
        "--range-ratio",
        type=float,
        default=1.0,
        help="lengths drawn uniformly from [ratio x len, len] (1.0: fixed)",
    )
    parser.add_argument(
        "--request-rate", type=float, default=float("inf"), help="Poisson arrivals per second"
    )
    parser.add_argument("--max-total-tokens", type=int, default=65536, help="KV pool, both sides")
    parser.add_argument(
        "--chunked-prefill-size", type=int, default=None, help="both sides (default: the engine's)"
    )
    parser.add_argument("--no-offline", action="store_true", help="skip the in-process engine")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", help="also write the results to this file")


def make_requests(n: int, args: argparse.Namespace, vocab: int, seed: int) -> list[BenchRequest]:
    rng = random.Random(seed)

    def length(full: int) -> int:
        return rng.randint(max(1, int(full * args.range_ratio)), full)

    return [
        BenchRequest(
            [rng.randrange(3, vocab) for _ in range(length(args.input_len))],
            length(args.output_len),
        )
        for _ in range(n)
    ]


def summarize(label: str, timings: list[RequestTiming], wall: float) -> dict[str, Any]:
    ok = [t for t in timings if t.ok]
    itls = [x for t in ok for x in t.itls]
    out_tokens = sum(t.output_tokens for t in ok)

    def pct(xs: list[float], q: float) -> float:
        if not xs:
            return float("nan")
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000

    return {
        "label": label,
        "completed": len(ok),
        "failed": len(timings) - len(ok),
        "errors": sorted({t.error for t in timings if not t.ok})[:3],
        "wall_s": wall,
        "output_tokens": out_tokens,
        "req_per_s": len(ok) / wall,
        "output_tok_per_s": out_tokens / wall,
        "ttft_p50_ms": pct([t.ttft for t in ok], 0.5),
        "ttft_p99_ms": pct([t.ttft for t in ok], 0.99),
        "itl_p50_ms": pct(itls, 0.5),
        "itl_p99_ms": pct(itls, 0.99),
        "e2e_p50_ms": pct([t.e2e for t in ok], 0.5),
        "e2e_mean_ms": statistics.fmean([t.e2e for t in ok]) * 1000 if ok else float("nan"),
    }


def paced(send: Any, rate: float) -> Any:
    """Poisson arrivals: each request waits its turn in a shared exponential schedule."""
    if rate == float("inf"):
        return send
    rng = random.Random(0)
    state: dict[str, float | None] = {"next": None}

    async def wrapped(req: BenchRequest) -> RequestTiming:
        now = time.perf_counter()
        start = state["next"] or now
        state["next"] = start + rng.expovariate(rate)
        await asyncio.sleep(max(0.0, start - now))
        return await send(req)

    return wrapped


def cpu_used(server: ServerProcess | None) -> float:
    """CPU seconds used so far by this process and the server process."""
    server_cpu = machine_load.process_cpu(server.proc.pid) if server is not None else 0.0
    return machine_load.own_cpu() + server_cpu


class ServerProcess:
    """`loomlm serve` in a child process, on a free port, until stopped."""

    def __init__(self, model: Path, max_total_tokens: int, extra: Sequence[str] = ()) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable, "-m", "loomlm.runtime.server", "serve",
            "--model", str(model), "--port", str(self.port),
            "--max-total-tokens", str(max_total_tokens), "--log-level", "warning", *extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd)

    async def wait_ready(self, session: Any, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}")
            try:
                async with session.get(f"{self.url}/health") as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            await asyncio.sleep(0.5)
        raise RuntimeError("the server did not come up")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import aiohttp

    levels = [int(x) for x in args.concurrency.split(",")]
    model = Path(args.model) if args.model else bench_model_dir()
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    results: list[dict[str, Any]] = []
    engine_kwargs: dict[str, Any] = {"max_total_tokens": args.max_total_tokens}
    # The server would leave a core to its event loop (--cpu-threads' default); here it gets
    # the offline engine's threads, so that the two sides differ by HTTP alone.
    extra: list[str] = ["--cpu-threads", str(torch.get_num_threads())]
    if args.chunked_prefill_size is not None:
        engine_kwargs["chunked_prefill_size"] = args.chunked_prefill_size
        extra += ["--chunked-prefill-size", str(args.chunked_prefill_size)]
    server = None if args.base_url else ServerProcess(model, args.max_total_tokens, extra)
    engine = None
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        try:
            if server is not None:
                await server.wait_ready(session)
            base_url = args.base_url or server.url  # type: ignore[union-attr]
            async with session.get(f"{base_url}/v1/models") as r:
                model_name = (await r.json())["data"][0]["id"]
            over_http = http_sender(session, base_url, args.backend, model_name)
            if not args.no_offline:
                from loomlm.runtime import Engine

                engine = Engine(model, **engine_kwargs)
            warm = make_requests(2, args, vocab, seed=-1)
            warm_args = argparse.Namespace(input_len=8, output_len=1, range_ratio=1.0)
            await run_all(warm, 2, over_http)
            if engine is not None:
                await run_all(warm, 2, engine_sender(engine))
            for level in levels:
                n = args.num_prompts or max(8, 2 * level)
                requests = make_requests(n, args, vocab, seed=args.seed + level)
                sides = [("http", over_http)]
                if engine is not None:
                    sides.append(("offline", engine_sender(engine)))
                for side, send in sides:
                    # `level` requests of one token first, so that the measured ones find
                    # their connections open, as a client that keeps them alive does: a
                    # burst of new connections reaches the server spread over ~70 ms.
                    await run_all(make_requests(level, warm_args, vocab, seed=-2), level, send)
                    before, cpu_before = machine_load.sample(), cpu_used(server)
                    timings, wall = await run_all(requests, level, paced(send, args.request_rate))
                    cpu = cpu_used(server) - cpu_before
                    row = summarize(f"{side} c={level}", timings, wall)
                    row.update(side=side, concurrency=level, prompts=n)
                    # CPU of this process (client or offline engine) and of the server
                    row["cpu_s"] = cpu
                    foreign = machine_load.foreign_cores(before, machine_load.sample())
                    if server is not None:  # a running child is not in our own counters
                        foreign -= (cpu - (machine_load.own_cpu() - before.ours)) / wall
                    row["foreign_cores"] = max(0.0, foreign)
                    results.append(row)
                    print_row(row)
                    if side == "http" and server is not None:
                        async with session.post(f"{base_url}/flush_cache") as r:
                            await r.read()
                    if side == "offline" and engine is not None:
                        engine.flush_cache()
        finally:
            if server is not None:
                server.stop()
            if engine is not None:
                engine.shutdown()
    return results


HEADER = (
    f"{'run':<16} {'done':>5} {'req/s':>7} {'out tok/s':>10} {'TTFT p50':>9} {'p99':>8} "
    f"{'ITL p50':>8} {'p99':>8} {'E2E p50':>9} {'CPU s/tok':>10} {'other load':>10}"
)


def print_row(r: dict[str, Any]) -> None:
    print(
        f"{r['label']:<16} {r['completed']:>5} {r['req_per_s']:>7.2f} {r['output_tok_per_s']:>10.1f} "
        f"{r['ttft_p50_ms']:>7.0f}ms {r['ttft_p99_ms']:>6.0f}ms {r['itl_p50_ms']:>6.1f}ms "
        f"{r['itl_p99_ms']:>6.1f}ms {r['e2e_p50_ms']:>7.0f}ms "
        f"{r['cpu_s'] / max(r['output_tokens'], 1) * 1000:>8.1f}ms {r['foreign_cores']:>8.2f}c"
        + (f"  FAILED {r['failed']}: {r['errors']}" if r["failed"] else ""),
        flush=True,
    )


def main(args: argparse.Namespace) -> None:
    print(
        f"serving benchmark: {args.backend} backend, input {args.input_len}, output "
        f"{args.output_len} (range ratio {args.range_ratio}), rate {args.request_rate}/s; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    print(HEADER)
    results = asyncio.run(run(args))
    print("\nHTTP layer cost (output tok/s, offline vs http, same requests):")
    by = {(r["side"], r["concurrency"]): r for r in results}
    for (side, level), r in by.items():
        off = by.get(("offline", level))
        if side == "http" and off is not None:
            cost = 1 - r["output_tok_per_s"] / off["output_tok_per_s"]
            per_tok = [x["cpu_s"] / max(x["output_tokens"], 1) * 1000 for x in (r, off)]
            print(
                f"  concurrency {level:>3}: http {r['output_tok_per_s']:.1f} vs offline "
                f"{off['output_tok_per_s']:.1f} tok/s -> {cost * 100:+.1f}% throughput; "
                f"CPU per token {per_tok[0]:.1f} vs {per_tok[1]:.1f} ms "
                f"({(per_tok[0] / per_tok[1] - 1) * 100:+.1f}%)"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
