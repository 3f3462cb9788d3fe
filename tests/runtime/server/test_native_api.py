"""SGLang's native endpoints over real HTTP, compared with the engine called directly."""

from __future__ import annotations

import json

import httpx
import pytest

from ..helpers import assert_pool_whole
from .live_server import LiveServer

PROMPT = "Once upon a time"
GREEDY = {"max_new_tokens": 24, "temperature": 0}


def sse_events(response: httpx.Response) -> list[dict]:
    """The JSON events of a stream; asserts it ends with [DONE]."""
    lines = [ln for ln in response.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(ln[len("data: ") :]) for ln in lines[:-1]]


def stream(http: httpx.Client, body: dict) -> list[dict]:
    with http.stream("POST", "/generate", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        return sse_events(r)


def test_greedy_generate_equals_engine(http, engine):
    direct = engine.generate(PROMPT, GREEDY)
    r = http.post("/generate", json={"text": PROMPT, "sampling_params": GREEDY, "rid": "g-1"})
    assert r.status_code == 200
    body = r.json()
    assert body["text"] == direct.text
    assert body["output_ids"] == direct.output_ids
    meta = body["meta_info"]
    assert meta["id"] == "g-1"
    assert meta["finish_reason"] == {"type": "length", "length": 24}
    assert meta["prompt_tokens"] == direct.prompt_tokens
    assert meta["completion_tokens"] == 24
    assert meta["e2e_latency"] > 0


def test_input_ids_and_batches_keep_order(http, engine):
    prompts = ["One day", "The dog ran", PROMPT]
    direct = engine.generate(prompts, GREEDY)
    r = http.post("/generate", json={"text": prompts, "sampling_params": GREEDY})
    assert [b["text"] for b in r.json()] == [d.text for d in direct]
    ids = [engine.tokenizer.encode(p) for p in prompts]
    per_prompt = [dict(GREEDY, max_new_tokens=n) for n in (4, 8, 12)]
    r = http.post("/generate", json={"input_ids": ids, "sampling_params": per_prompt})
    outs = r.json()
    assert [o["meta_info"]["completion_tokens"] for o in outs] == [4, 8, 12]
    assert [o["output_ids"] for o in outs] == [d.output_ids[:n] for d, n in zip(direct, (4, 8, 12))]


def test_n_samples_are_flat_and_prompt_major(http):
    params = {"max_new_tokens": 8, "n": 3, "temperature": 1.0, "seed": 5}
    r = http.post("/generate", json={"text": ["One day", "The dog"], "sampling_params": params})
    outs = r.json()
    assert len(outs) == 6
    assert len({tuple(o["output_ids"]) for o in outs[:3]}) > 1  # the samples differ
    again = http.post("/generate", json={"text": "One day", "sampling_params": params}).json()
    assert [o["output_ids"] for o in again] == [o["output_ids"] for o in outs[:3]]


def test_stop_token_is_trimmed_from_output_ids_but_counted(http, engine):
    free = engine.generate(PROMPT, GREEDY)
    stop_id = free.output_ids[5]  # the greedy run will end on this token
    params = dict(GREEDY, stop_token_ids=[stop_id])
    direct = engine.generate(PROMPT, params)
    assert direct.output_ids[-1] == stop_id  # the engine keeps it
    body = http.post("/generate", json={"text": PROMPT, "sampling_params": params}).json()
    assert body["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_id}
    assert body["output_ids"] == direct.output_ids[:-1]
    assert body["meta_info"]["completion_tokens"] == len(direct.output_ids)


def test_stream_is_cumulative_and_ends_as_the_whole_result(http):
    full = http.post("/generate", json={"text": PROMPT, "sampling_params": GREEDY}).json()
    events = stream(http, {"text": PROMPT, "sampling_params": GREEDY})
    assert len(events) > 3
    for a, b in zip(events, events[1:]):
        assert b["text"].startswith(a["text"])  # SGLang's client relies on this
    assert all(e["meta_info"]["finish_reason"] is None for e in events[:-1])
    assert events[-1]["text"] == full["text"]
    assert events[-1]["output_ids"] == full["output_ids"]
    assert events[-1]["meta_info"]["finish_reason"] == full["meta_info"]["finish_reason"]
    counts = [e["meta_info"]["completion_tokens"] for e in events]
    assert counts == sorted(counts) and counts[-1] == 24


def test_incremental_stream_deltas_concatenate(engine):
    with LiveServer(engine, incremental_streaming_output=True) as s:
        with httpx.Client(base_url=s.url, timeout=60) as http:
            full = http.post("/generate", json={"text": PROMPT, "sampling_params": GREEDY}).json()
            params = {"text": PROMPT, "sampling_params": GREEDY, "return_logprob": True}
            events = stream(http, params)
    assert "".join(e["text"] for e in events) == full["text"]
    assert [t for e in events for t in e["output_ids"]] == full["output_ids"]
    logprobs = [x for e in events for x in e["meta_info"]["output_token_logprobs"]]
    assert [x[1] for x in logprobs] == full["output_ids"]
    assert events[-1]["meta_info"]["output_token_logprobs_length"] == 24


def test_batch_stream_tags_events_with_their_index(http):
    prompts = ["One day", "The dog ran"]
    full = http.post("/generate", json={"text": prompts, "sampling_params": GREEDY}).json()
    events = stream(http, {"text": prompts, "sampling_params": GREEDY})
    last = {}
    for e in events:
        last[e["index"]] = e
    assert [last[i]["text"] for i in range(2)] == [f["text"] for f in full]


def test_logprobs_follow_sglang_layout(http, engine):
    ids = engine.tokenizer.encode(PROMPT)
    body = {
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": 4, "temperature": 0},
        "return_logprob": True,
        "logprob_start_len": 1,
        "top_logprobs_num": 3,
        "return_text_in_logprobs": True,
    }
    meta = http.post("/generate", json=body).json()["meta_info"]
    direct = engine.generate(
        input_ids=ids,
        sampling_params={"max_new_tokens": 4, "temperature": 0},
        return_logprob=True,
        logprob_start_len=1,
        top_logprobs_num=3,
        return_text_in_logprobs=True,
    )
    inputs = meta["input_token_logprobs"]
    assert len(inputs) == len(ids) - 1
    assert inputs[0][0] is None and inputs[0][1] == ids[1]  # the null first entry
    assert [e[1] for e in inputs] == ids[1:]
    assert all(isinstance(e[0], float) and e[0] <= 0 for e in inputs[1:])
    assert inputs == direct.input_token_logprobs
    assert meta["output_token_logprobs"] == direct.output_token_logprobs
    assert all(e[2] == engine.tokenizer.decode([e[1]]) for e in meta["output_token_logprobs"])
    assert meta["input_top_logprobs"][0] is None
    assert all(len(row) == 3 for row in meta["output_top_logprobs"])
    # the greedy token is the top one
    for entry, row in zip(meta["output_token_logprobs"], meta["output_top_logprobs"]):
        assert row[0][1] == entry[1] and row[0][0] == pytest.approx(entry[0])
    assert meta["output_token_logprobs_length"] == 4


def test_prefill_only_reports_prompt_tokens(http, engine):
    r = http.post("/generate", json={"text": PROMPT, "sampling_params": {"max_new_tokens": 0}})
    meta = r.json()["meta_info"]
    assert meta["prompt_tokens"] == len(engine.tokenizer.encode(PROMPT))
    assert meta["finish_reason"] == {"type": "length", "length": 0}
    assert r.json()["text"] == "" and r.json()["output_ids"] == []


def test_regex_constraint_over_http(http):
    params = {"max_new_tokens": 16, "regex": r"[0-9]{3}-[0-9]{4}", "temperature": 1.0}
    outs = http.post("/generate", json={"text": ["Call", "Her number"], "sampling_params": params})
    import re

    for out in outs.json():
        assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", out["text"])


def test_info_endpoints(http, engine):
    for path in ("/model_info", "/get_model_info"):
        info = http.get(path).json()
        assert info["is_generation"] is True
        assert info["model_path"].endswith("tinystories-260k")
        assert info["max_context_length"] == engine.max_context
    for path in ("/server_info", "/get_server_info"):
        info = http.get(path).json()
        assert info["port"] == int(http.base_url.port)
        assert info["max_total_num_tokens"] == engine.stats()["kv_slots_total"]
        assert "version" in info and info["internal_states"][0]["kv_slots_total"] > 0
    assert http.get("/health").status_code == 200
    assert http.get("/health_generate").status_code == 200


def test_flush_cache_empties_the_prefix_cache(http, engine):
    http.post("/generate", json={"text": PROMPT, "sampling_params": GREEDY})
    assert engine.stats()["cached_tokens"] > 0
    r = http.post("/flush_cache")
    assert r.status_code == 200 and r.text.startswith("Cache flushed")
    assert engine.stats()["cached_tokens"] == 0


def test_tokenize_and_detokenize(http, engine):
    r = http.post("/tokenize", json={"prompt": PROMPT}).json()
    assert r["tokens"] == engine.tokenizer.encode(PROMPT) and r["count"] == len(r["tokens"])
    assert r["max_model_len"] == engine.max_context
    many = http.post("/tokenize", json={"prompt": ["a", "b c"], "add_special_tokens": False})
    assert many.json()["tokens"] == [
        engine.tokenizer.encode(t, add_special_tokens=False) for t in ["a", "b c"]
    ]
    text = http.post("/detokenize", json={"tokens": r["tokens"]}).json()["text"]
    assert text == PROMPT
    assert http.post("/detokenize", json={"tokens": [r["tokens"], [1]]}).json()["text"][0] == PROMPT


def test_abort_request_ends_a_running_request(http, server, engine):
    body = {
        "text": PROMPT,
        "rid": "to-abort",
        "sampling_params": {"max_new_tokens": 500, "ignore_eos": True},
        "stream": True,
    }
    with httpx.Client(base_url=server.url, timeout=60) as other:
        with other.stream("POST", "/generate", json=body) as r:
            lines = r.iter_lines()
            first = next(ln for ln in lines if ln)
            assert json.loads(first[6:])["meta_info"]["finish_reason"] is None
            ok = http.post("/abort_request", json={"rid": "to-abort"}).json()
            assert ok == {"success": True}
            events = [json.loads(ln[6:]) for ln in lines if ln and ln != "data: [DONE]"]
    reason = events[-1]["meta_info"]["finish_reason"]
    assert reason["type"] == "abort"
    assert http.post("/abort_request", json={"rid": "to-abort"}).json() == {"success": False}
    assert_pool_whole(engine)


def test_streamed_prompt_logprobs_are_whole_when_the_prompt_was_chunked(http, server, engine):
    """A long prompt arriving while another request decodes is prefilled in chunks; its
    stream must still carry all of the prompt's logprobs, whole, in its first event (later
    events carry only their new tokens' logprobs)."""
    busy = {"text": PROMPT, "rid": "busy", "stream": True,
            "sampling_params": {"max_new_tokens": 500, "ignore_eos": True}}  # fmt: skip
    long_ids = engine.tokenizer.encode("Once upon a time, there was a dog. " * 12)
    assert len(long_ids) > 2 * 64  # over two CPU prefill chunks
    body = {"input_ids": long_ids, "sampling_params": {"max_new_tokens": 3, "temperature": 0},
            "return_logprob": True, "logprob_start_len": 0}  # fmt: skip
    with httpx.Client(base_url=server.url, timeout=60) as other:
        with other.stream("POST", "/generate", json=busy) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data:")
            events = stream(http, body)
            http.post("/abort_request", json={"rid": "busy"})
            list(lines)
    assert events[-1]["meta_info"]["cached_tokens"] < len(long_ids) - 64
    inputs = events[0]["meta_info"]["input_token_logprobs"]
    assert len(inputs) == len(long_ids) and inputs[0][0] is None
    assert all(e["meta_info"]["input_token_logprobs"] == [] for e in events[1:])
