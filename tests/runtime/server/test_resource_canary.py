"""200 requests, each at one of the limits (most samples, most logprobs, most stop strings,
the largest grammar), while a canary keeps asking for a few tokens: every canary answers
within a second and exactly as alone, every request at its limits completes, and nothing
leaks.

As deployed: `loomlm serve` in a process of its own, the 200 clients in another, the canary
in this one (clients sharing the server's interpreter would take turns with it for the GIL,
and measure that). Latencies are printed (`pytest -s`).
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.synchronize import Event
from queue import Queue

import httpx
from loomlm.runtime import RequestLimits

from .live_server import started_server

PROMPT = "Once upon a time"
CANARY = {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}


def chain_grammar(k: int, rules: int) -> str:
    """A grammar of `rules` rules, each calling the next (distinct per k: no cache hits)."""
    body = "".join(f'r{i}: "{chr(97 + (i + k) % 26)}" r{i + 1}\n' for i in range(rules - 2))
    return f'start: r0\n{body}r{rules - 2}: "z"\n'


def at_the_limits(limits: RequestLimits) -> list[dict]:
    stop_len = limits.max_stop_chars // limits.max_stop_strings
    stops = [f"{i:04d}" + "q" * (stop_len - 4) for i in range(limits.max_stop_strings)]
    bodies: list[dict] = []
    for k in range(200):
        params: dict = {"max_new_tokens": 16, "ignore_eos": True}
        body: dict = {"text": f"{PROMPT} {k}", "sampling_params": params}
        kind = k % 8
        if kind == 0:  # 25 calls of 128 samples: 3,200 of the 4,096 the queue admits
            params["n"] = limits.max_n
        elif kind in (1, 2, 3):
            body.update(return_logprob=True, logprob_start_len=0, return_text_in_logprobs=True,
                        top_logprobs_num=limits.max_top_logprobs)  # fmt: skip
        elif kind in (4, 5):
            params["stop"] = stops
        else:
            params["ebnf"] = chain_grammar(k, limits.max_grammar_rules)
            params["max_new_tokens"] = 32
        bodies.append(body)
    return bodies


def send_all(url: str, bodies: list[dict], statuses: Queue) -> None:
    """The 200 clients, in a process of their own, at low priority: they stand in for
    clients on other machines, and must not take the server's CPU to build requests and
    read responses (on this 2-core machine they would otherwise take most of a core)."""
    os.nice(15)

    def one(body: dict) -> int:
        with httpx.Client(base_url=url, timeout=300) as http:
            return http.post("/generate", json=body).status_code

    with ThreadPoolExecutor(len(bodies)) as pool:
        statuses.put(list(pool.map(one, bodies)))


def ask_canary(url: str, expected: list[int], stop: Event, report: Queue) -> None:
    """The canary, in a small process of its own (in the test's process it would time the
    test process's own pauses): a few tokens every 50 ms until `stop`; reports latencies
    and any answer that differs from the request alone."""
    latencies: list[float] = []
    wrong: list[str] = []
    with httpx.Client(base_url=url, timeout=30) as http:
        while not stop.is_set():
            start = time.perf_counter()
            r = http.post("/generate", json={"text": PROMPT, "sampling_params": CANARY})
            latencies.append(time.perf_counter() - start)
            if r.status_code != 200 or r.json()["output_ids"] != expected:
                wrong.append(r.text[:300])
            time.sleep(0.05)
    report.put((latencies, wrong))


def load_with_canary(url: str, expected: list[int]) -> tuple[list[int], list[float], list[str]]:
    """One round: the 200 requests at the limits, with the canary asking throughout.
    Returns their statuses, the canary's latencies and any canary answer that differed."""
    spawn = multiprocessing.get_context("spawn")
    stop, report, statuses = spawn.Event(), spawn.Queue(), spawn.Queue()
    canary = spawn.Process(target=ask_canary, args=(url, expected, stop, report))
    canary.start()
    time.sleep(3)  # the canary's process starts and asks a few times alone
    load = spawn.Process(target=send_all, args=(url, at_the_limits(RequestLimits()), statuses))
    load.start()
    result = statuses.get(timeout=600)
    load.join(30)
    stop.set()
    latencies, wrong = report.get(timeout=60)
    canary.join(30)
    print(
        f"\ncanary under load: {len(latencies)} requests, p50 "
        f"{statistics.median(latencies) * 1000:.0f} ms, p99 "
        f"{sorted(latencies)[int(0.99 * (len(latencies) - 1))] * 1000:.0f} ms, "
        f"max {max(latencies) * 1000:.0f} ms"
    )
    return result, latencies, wrong


def test_requests_at_their_limits_leave_the_canary_under_a_second():
    """The machine is shared and its speed varies by up to ~1.6x between runs: a round whose
    slowest canary passes a second is run once more, and the second round decides."""
    with started_server() as url, httpx.Client(base_url=url, timeout=30) as http:
        expected = http.post("/generate", json={"text": PROMPT, "sampling_params": CANARY})
        for _round in range(2):
            result, latencies, wrong = load_with_canary(url, expected.json()["output_ids"])
            assert result == [200] * 200
            assert not wrong, wrong[:3]
            if max(latencies) <= 1.0:
                break
        assert max(latencies) <= 1.0, sorted(latencies)[-5:]
        stats = http.get("/server_info").json()["internal_states"][0]
        assert stats["num_running"] == stats["num_waiting"] == stats["num_in_flight"] == 0
        assert stats["kv_slots_free"] + stats["cached_tokens"] == stats["kv_slots_total"]
        assert http.post("/flush_cache").status_code == 200
        stats = http.get("/server_info").json()["internal_states"][0]
        assert stats["kv_slots_free"] == stats["kv_slots_total"]
