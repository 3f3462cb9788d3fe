"""No single request takes what everyone else needs: `n` and the queue are bounded, large
inputs are sized before they are worked on and worked on off the event loop, streamed
logprobs grow linearly, the grammar cache is bounded in bytes, and stop strings cost time in
proportion to the new text."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from loomlm.runtime import Engine, RequestLimits

from ..helpers import assert_pool_whole
from .bystander import PROMPT, Bystander
from .live_server import LiveServer


def test_n_is_capped(http, server, engine):
    """Defect 6: n = 1,000,000 took 1.6 GB and blocked /health for 18 s."""
    with Bystander(server, engine):
        r = http.post("/generate", json={"text": PROMPT, "sampling_params": {"n": 1_000_000}})
        assert r.status_code == 400 and "max_n" in r.json()["error"]["message"]
        r = http.post("/v1/completions", json={"prompt": PROMPT, "n": 129, "max_tokens": 1})
        assert r.status_code == 400 and "n" in r.json()["error"]["message"]
        r = http.post("/generate", json={"text": PROMPT, "sampling_params": {"n": 128, "max_new_tokens": 1}})  # fmt: skip
        assert r.status_code == 200 and len(r.json()) == 128


def test_past_the_queue_limit_a_call_is_503_with_retry_after():
    """Defect 6: 1,000 concurrent requests were all admitted, whatever they held."""
    with Engine(limits=RequestLimits(max_queued_requests=8)) as engine:
        with LiveServer(engine) as s, httpx.Client(base_url=s.url, timeout=30) as http:
            long = {"text": PROMPT, "stream": True, "rid": "hog",
                    "sampling_params": {"n": 6, "max_new_tokens": 500, "ignore_eos": True}}  # fmt: skip
            with httpx.Client(base_url=s.url, timeout=30) as other:
                with other.stream("POST", "/generate", json=long) as r:
                    lines = r.iter_lines()
                    assert next(lines).startswith("data:")
                    body = {"text": PROMPT, "sampling_params": {"n": 3, "max_new_tokens": 2}}
                    refused = http.post("/generate", json=body)
                    assert refused.status_code == 503
                    assert refused.headers["retry-after"] == "1"
                    assert "max_queued_requests" in refused.json()["error"]["message"]
                    chat = {"messages": [{"role": "user", "content": "hi"}], "n": 3}
                    assert http.post("/v1/completions", json={"prompt": PROMPT, "n": 3}).status_code == 503  # fmt: skip
                    assert http.get("/health").status_code == 200
                    ok = http.post("/generate", json={**body, "sampling_params": {"n": 2, "max_new_tokens": 2}})  # fmt: skip
                    assert ok.status_code == 200
                    http.post("/abort_request", json={"rid": "hog"})
                    list(lines)
            assert http.post("/generate", json=body).status_code == 200
            del chat
        assert_pool_whole(engine)


class HealthProbe:
    """Measures /health's latency, over and over, while something else happens."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self._stop.is_set():
                start = time.perf_counter()
                assert c.get("/health").status_code == 200
                self.latencies.append(time.perf_counter() - start)
                time.sleep(0.01)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_large_inputs_are_sized_first_and_never_block_the_event_loop(http, server, engine):
    """Defect 8: /tokenize of 8 MiB blocked /health for 6.3 s, an 8 MiB chat message 7 s,
    300k messages 3.5 s, /detokenize of 2M ids 1.2 s; a 6 MB prompt was tokenized in full
    before the context check refused it."""
    big = "Once upon a time there was a little dog. " * 200_000  # 8 MiB
    cases = [
        ("/tokenize", {"prompt": big}, "cannot fit"),
        ("/generate", {"text": big[: 6 << 20], "sampling_params": {"max_new_tokens": 1}}, "cannot fit"),
        ("/v1/completions", {"prompt": big[: 6 << 20], "max_tokens": 1}, "cannot fit"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": big}]}, "cannot fit"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}] * 300_000}, "cannot fit"),
        ("/detokenize", {"tokens": [5] * 2_000_000}, "at most"),
    ]  # fmt: skip
    with Bystander(server, engine), HealthProbe(server.url) as probe:
        time.sleep(0.1)
        for path, body, said in cases:
            r = http.post(path, content=json.dumps(body))
            assert r.status_code == 400, (path, r.text[:200])
            assert said in r.json()["error"]["message"], r.text[:300]
        time.sleep(0.1)
    assert max(probe.latencies) < 1.0, f"/health waited {max(probe.latencies):.2f} s"
    ok = http.post("/tokenize", json={"prompt": [PROMPT] * 2000})  # large, within limits
    assert ok.status_code == 200 and len(ok.json()["tokens"]) == 2000


def test_a_streamed_logprob_response_grows_linearly(http, server, engine):
    """Defect 9: each event repeated the cumulative logprobs: 400 tokens with top 64 streamed
    158 MB against 0.79 MB unstreamed. Events now carry their new tokens' entries only."""
    body = {"text": PROMPT, "return_logprob": True, "top_logprobs_num": 20,
            "logprob_start_len": 0, "return_text_in_logprobs": True,
            "sampling_params": {"max_new_tokens": 300, "ignore_eos": True, "temperature": 0}}  # fmt: skip
    with Bystander(server, engine):
        whole = http.post("/generate", json=body)
        with http.stream("POST", "/generate", json={**body, "stream": True}) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data: {")]
    streamed_bytes = sum(len(line) for line in lines)
    assert len(lines) > 100
    assert streamed_bytes < 3 * len(whole.content), (streamed_bytes, len(whole.content))
    metas = [json.loads(line[6:])["meta_info"] for line in lines]
    full = whole.json()["meta_info"]
    for key in ("input_token_logprobs", "output_token_logprobs"):
        merged = [x for m in metas for x in m[key]]
        assert [e[1:] for e in merged] == [e[1:] for e in full[key]], key  # ids and texts
        # values within float noise: the two ran in different batches (the bystander's)
        assert merged[1:] == [[pytest.approx(e[0], abs=1e-4), *e[1:]] for e in full[key][1:]]
    for key in ("input_top_logprobs", "output_top_logprobs"):
        merged = [x for m in metas for x in m[key]]
        assert len(merged) == len(full[key]), key
        same = [  # the same tokens (near-ties may swap places between batches)
            (a is None and b is None) or {e[1] for e in a} == {e[1] for e in b}
            for a, b in zip(merged, full[key])
        ]
        assert sum(same) >= 0.95 * len(same), key
    assert metas[-1]["output_token_logprobs_length"] == 300


def enum_schema(k: int, values: int) -> dict:
    return {"type": "object", "properties": {"v": {"enum": [f"value {k} number {i} in a long list" for i in range(values)]}}}  # fmt: skip


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_the_grammar_cache_is_bounded_in_bytes_and_flushed():
    """Defect 10: 40 distinct large-enum schemas held +334 MB, bounded only by entry count,
    and /flush_cache did not release it."""
    budget = 8 << 20
    with Engine(grammar_cache_bytes=budget) as engine:
        with LiveServer(engine) as s, httpx.Client(base_url=s.url, timeout=60) as http:
            before = rss_mb()
            with Bystander(s, engine, tokens=300):
                for k in range(40):
                    body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 4, "json_schema": enum_schema(k, 1500)}}  # fmt: skip
                    assert http.post("/generate", json=body).status_code == 200
                    stats = engine.stats()
                    assert stats["grammar_cache_bytes"] <= budget, stats
            assert stats["grammar_cache_entries"] < 40
            assert http.post("/flush_cache").status_code == 200
            stats = engine.stats()
            assert stats["grammar_cache_entries"] == 0 and stats["grammar_cache_bytes"] == 0
            assert rss_mb() - before < 150, "the flushed grammars' memory stayed"
            again = {"text": PROMPT, "sampling_params": {"max_new_tokens": 4, "json_schema": enum_schema(0, 1500)}}  # fmt: skip
            assert http.post("/generate", json=again).status_code == 200  # recompiled


def test_many_stop_strings_are_refused_and_the_most_allowed_still_match(http, server, engine):
    """Defect 11: 10k stop strings were each searched every token on the engine thread (8
    such requests: 15.2 s vs 2.1 s; everyone's p50 latency 9x)."""
    with Bystander(server, engine):
        many = [f"never{i}" for i in range(10_000)]
        r = http.post("/generate", json={"text": PROMPT, "sampling_params": {"stop": many}})
        assert r.status_code == 400 and "max_stop_strings" in r.json()["error"]["message"]
        greedy = {"max_new_tokens": 60, "temperature": 0}
        plain = engine.generate(PROMPT, greedy).text
        word = plain.split()[5]
        stops = [f"never{i}" for i in range(127)] + [word]
        r = http.post("/generate", json={"text": PROMPT, "sampling_params": {**greedy, "stop": stops}})  # fmt: skip
        assert r.status_code == 200
        assert r.json()["text"] == plain[: plain.index(word)]
        assert r.json()["meta_info"]["finish_reason"] == {"type": "stop", "matched": word}


@pytest.mark.parametrize("path", ["/generate", "/v1/completions"])
def test_stop_token_ids_beyond_the_limit_are_refused(http, path):
    ids = list(range(2000))
    body = (
        {"text": PROMPT, "sampling_params": {"stop_token_ids": ids}}
        if path == "/generate"
        else {"prompt": PROMPT, "stop_token_ids": ids}
    )
    r = http.post(path, json=body)
    assert r.status_code == 400 and "stop_token_ids" in r.json()["error"]["message"]
