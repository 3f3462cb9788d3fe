"""GET /metrics: Prometheus text that follows the engine's own counters."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def scrape(http) -> dict[str, float]:
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            key = sample.name + "".join(f"{{{k}={v}}}" for k, v in sorted(sample.labels.items()))
            values[key] = sample.value
    return values


def test_metrics_follow_the_engine(http, engine):
    before = scrape(http)
    params = {"max_new_tokens": 10, "temperature": 0, "ignore_eos": True}
    prompts = ["Tom had a red ball.", "Tom had a red ball. He", "A cat sat."]
    for prompt in prompts:  # one after another: the second reads the first's prefix
        http.post("/generate", json={"text": prompt, "sampling_params": params})
    after = scrape(http)
    stats = engine.stats()

    def grew(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    assert grew("loomlm:generation_tokens_total") == 30
    assert after["loomlm:generation_tokens_total"] == stats["generated_tokens"]
    assert after["loomlm:prompt_tokens_total"] == stats["prompt_tokens"]
    assert grew("loomlm:time_to_first_token_seconds_count") == 3
    assert grew("loomlm:inter_token_latency_seconds_count") == 27  # 9 gaps per request
    assert grew("loomlm:e2e_request_latency_seconds_count") == 3
    assert grew("loomlm:request_success_total{finished_reason=length}") == 3
    assert after["loomlm:num_requests_running"] == 0 and after["loomlm:num_requests_waiting"] == 0
    assert after["loomlm:kv_cache_usage_perc"] == 0  # idle: nothing held but evictable cache
    assert after["loomlm:kv_cache_cached_tokens"] == stats["cached_tokens"] > 0
    assert 0 < after["loomlm:cache_hit_rate"] == stats["cache_hit_rate"] <= 1
    assert after["loomlm:time_to_first_token_seconds_bucket{le=+Inf}"] >= 3


def test_running_requests_show_while_they_run(http, server, engine):
    import httpx

    body = {
        "text": "Once upon a time",
        "stream": True,
        "rid": "seen",
        "sampling_params": {"max_new_tokens": 500, "ignore_eos": True},
    }
    with httpx.Client(base_url=server.url, timeout=60) as other:
        with other.stream("POST", "/generate", json=body) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data:")
            values = scrape(http)
            assert values["loomlm:num_requests_running"] == 1
            assert values["loomlm:kv_cache_usage_perc"] > 0
            http.post("/abort_request", json={"rid": "seen"})
            list(lines)
    assert scrape(http)["loomlm:request_success_total{finished_reason=abort}"] >= 1
