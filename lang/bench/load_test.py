"""`python -m loomlm.bench load`: many concurrent streaming clients against one
`loomlm serve` on loopback, bounded in time. Every output must equal the in-process engine's
greedy result for the same request, and afterwards no KV slot may be held.

Exits non-zero on any failure, so CI and the test suite can run it as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from typing import Any, NamedTuple

from .serving import ServerProcess

STARTS = [
    "Once upon a time",
    "One day, a little girl named Lily",
    "Tom and his dog went to the park",
    "The sun was hot and the sky was blue.",
    "There was a big red ball",
    'Mom said, "',
]


class LoadRequest(NamedTuple):
    prompt: str
    max_new_tokens: int
    ignore_eos: bool
    openai: bool  # sent to /v1/completions instead of /generate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=300, help="seconds for the whole test")
    parser.add_argument("--model", help="checkpoint (default: the built-in model)")
    parser.add_argument("--seed", type=int, default=0)


def make_load(n: int, seed: int) -> list[LoadRequest]:
    rng = random.Random(seed)
    return [
        LoadRequest(
            f"{rng.choice(STARTS)} {rng.randrange(1000)}",
            rng.choice([1, 4, 16, 64, 128, 256]),
            rng.random() < 0.5,
            i % 4 == 3,
        )
        for i in range(n)
    ]


async def stream_one(session: Any, url: str, req: LoadRequest) -> tuple[str, str]:
    """(text, finish reason) of one streamed request."""
    params = {"max_new_tokens": req.max_new_tokens, "temperature": 0, "ignore_eos": req.ignore_eos}
    if req.openai:
        body = {"prompt": req.prompt, "max_tokens": req.max_new_tokens, "temperature": 0,
                "ignore_eos": req.ignore_eos, "stream": True}  # fmt: skip
        path = "/v1/completions"
    else:
        body = {"text": req.prompt, "sampling_params": params, "stream": True}
        path = "/generate"
    text, reason = "", ""
    async with session.post(url + path, json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {await resp.text()}")
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            event = json.loads(line[5:])
            if req.openai:
                choice = event["choices"][0]
                text += choice["text"]
                reason = choice["finish_reason"] or reason
            else:
                text = event["text"]  # cumulative
                finish = event["meta_info"]["finish_reason"]
                reason = finish["type"] if finish else reason
    return text, reason


async def run(args: argparse.Namespace) -> int:
    import aiohttp
    from loomlm.runtime import Engine
    from loomlm.runtime.executor.models.loader import resolve_model_dir

    model = resolve_model_dir(args.model)
    load = make_load(args.clients, args.seed)
    server = ServerProcess(model, max_total_tokens=131072)
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as s:
        try:
            await server.wait_ready(s)
            t0 = time.perf_counter()
            results = await asyncio.wait_for(
                asyncio.gather(
                    *(stream_one(s, server.url, r) for r in load), return_exceptions=True
                ),
                args.timeout,
            )
            wall = time.perf_counter() - t0
            async with s.get(f"{server.url}/server_info") as r:
                stats = (await r.json())["internal_states"][0]
        finally:
            server.stop()
    failures = [f"{i}: {r!r}" for i, r in enumerate(results) if isinstance(r, BaseException)]

    # The reference: the same requests on an in-process engine, one batch.
    with Engine(model) as engine:
        expected = engine.generate(
            [r.prompt for r in load],
            [
                {"max_new_tokens": r.max_new_tokens, "temperature": 0, "ignore_eos": r.ignore_eos}
                for r in load
            ],
        )
    wrong = [
        i
        for i, (got, want) in enumerate(zip(results, expected))
        if not isinstance(got, BaseException) and got != (want.text, want.finish_reason.type)
    ]
    held = stats["kv_slots_total"] - stats["kv_slots_free"] - stats["cached_tokens_evictable"]
    tokens = sum(len(e.output_ids) for e in expected)
    print(
        f"{args.clients} concurrent streaming clients ({sum(r.openai for r in load)} via /v1/completions)"
    )
    print(
        f"  completed:      {args.clients - len(failures)}/{args.clients} in {wall:.1f} s ({tokens / wall:.0f} tok/s)"
    )
    print(f"  wrong outputs:  {len(wrong)} (vs the in-process engine, greedy)")
    print(
        f"  after the load: {stats['num_running']} running, {stats['num_waiting']} waiting, {held} KV slots held"
    )
    print(f"  total time:     {time.perf_counter() - started:.1f} s")
    for f in failures[:5]:
        print("  failure:", f)
    for i in wrong[:5]:
        print(f"  wrong #{i}: {load[i]} -> {results[i]!r} expected {expected[i].text!r}")
    ok = (
        not failures
        and not wrong
        and held == 0
        and stats["num_running"] == stats["num_waiting"] == 0
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main(args: argparse.Namespace) -> None:
    sys.exit(asyncio.run(run(args)))
