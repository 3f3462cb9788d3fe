"""Bad input: the right status code, a message naming the field, and an engine that goes on
serving everyone else (including a stream running meanwhile)."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from ..helpers import assert_pool_whole
from .live_server import LiveServer

PROMPT = "Once upon a time"
OK = {"text": PROMPT, "sampling_params": {"max_new_tokens": 4, "temperature": 0}}


def generate_with(**overrides) -> dict:
    body = json.loads(json.dumps(OK))
    for key, value in overrides.items():
        if key.startswith("sp_"):
            body["sampling_params"][key[3:]] = value
        else:
            body[key] = value
    return body


BAD_GENERATE = [
    (generate_with(sp_frobnicate=1), "frobnicate"),
    (generate_with(sp_temperature="hot"), "temperature"),
    (generate_with(sp_max_new_tokens=1.5), "max_new_tokens"),
    (generate_with(sp_top_p=2.0), "top_p"),
    (generate_with(sp_top_k=0), "top_k"),
    (generate_with(sp_n=0), "n"),
    (generate_with(sp_min_new_tokens=9), "min_new_tokens"),
    (generate_with(sp_regex="[0-9"), "regex"),
    (generate_with(sp_json_schema={"type": "frob"}), "json_schema"),
    (generate_with(sp_stop_regex=["a+"]), "stop_regex"),
    (generate_with(sampling_params=[{}, {}]), "sampling_params"),
    (generate_with(sampling_params="greedy"), "sampling_params"),
    (generate_with(stream="yes"), "stream"),
    (generate_with(return_logprob=1), "return_logprob"),
    (generate_with(logprob_start_len=-5), "logprob_start_len"),
    (generate_with(logprob_start_len=100, return_logprob=True), "logprob_start_len"),
    (generate_with(top_logprobs_num="3"), "top_logprobs_num"),
    (generate_with(rid=7), "rid"),
    (generate_with(text=5), "text"),
    (generate_with(text=""), "text"),
    (generate_with(text=["ok", 3]), "text[1]"),
    (generate_with(text=PROMPT * 200), "context"),
    (generate_with(input_ids=[1, 2]), "text"),  # both text and input_ids
    ({"input_ids": [1, "a"]}, "input_ids"),
    ({"input_ids": [1, 10**9]}, "input_ids"),
    ({"sampling_params": {}}, "text"),
    (generate_with(image_data="aGk="), "image_data"),
]


@pytest.fixture(scope="module")
def long_stream(server, engine):
    """A stream that runs while the bad requests arrive; yields its final result later."""
    result = {}
    body = {
        "text": PROMPT,
        "sampling_params": {"max_new_tokens": 120, "temperature": 0, "ignore_eos": True},
    }

    def run() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            with c.stream("POST", "/generate", json={**body, "stream": True}) as r:
                events = [
                    json.loads(ln[6:]) for ln in r.iter_lines() if ln and ln != "data: [DONE]"
                ]
        result["last"] = events[-1]

    thread = threading.Thread(target=run)
    thread.start()
    yield lambda: (thread.join(120), result["last"])[1]


def check_still_serving(http: httpx.Client) -> None:
    assert http.get("/health").status_code == 200
    r = http.post("/generate", json=OK)
    assert r.status_code == 200 and r.json()["meta_info"]["completion_tokens"] == 4


@pytest.mark.parametrize("body,field", BAD_GENERATE, ids=[f for _, f in BAD_GENERATE])
def test_bad_generate_is_400_naming_the_field(http, long_stream, body, field):
    r = http.post("/generate", json=body)
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert field in message, message
    check_still_serving(http)


def test_malformed_and_non_object_bodies(http):
    for raw in (b"{", b"", b"[1, 2]", b"\xff\xfe", b'"text"'):
        r = http.post("/generate", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, raw
        assert r.json()["error"]["message"].startswith("body:")
    r = http.post("/v1/completions", content=b"{nope")
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    check_still_serving(http)


def test_unknown_path_and_method(http):
    r = http.get("/nope")
    assert r.status_code == 404 and "/nope" in r.json()["error"]["message"]
    r = http.get("/generate")
    assert r.status_code == 405 and "GET" in r.json()["error"]["message"]


def test_rid_in_flight_is_refused(http, server):
    body = {
        "text": PROMPT,
        "rid": "dup",
        "stream": True,
        "sampling_params": {"max_new_tokens": 500, "ignore_eos": True},
    }
    with httpx.Client(base_url=server.url, timeout=60) as other:
        with other.stream("POST", "/generate", json=body) as r:
            lines = r.iter_lines()  # kept: dropping it would close the stream (and abort)
            assert next(lines).startswith("data:")
            again = http.post("/generate", json={**body, "stream": False})
            assert again.status_code == 400 and "dup" in again.json()["error"]["message"]
            streamed = http.post("/generate", json=body)  # refused before any event
            assert streamed.status_code == 400 and "dup" in streamed.json()["error"]["message"]
            http.post("/abort_request", json={"rid": "dup"})


def test_the_stream_running_meanwhile_was_undisturbed(long_stream, engine):
    last = long_stream()
    direct = engine.generate(PROMPT, {"max_new_tokens": 120, "temperature": 0, "ignore_eos": True})
    assert last["text"] == direct.text
    assert last["meta_info"]["finish_reason"] == {"type": "length", "length": 120}
    assert_pool_whole(engine)


def test_body_over_the_limit_is_413(engine):
    with LiveServer(engine, max_body_bytes=4096) as s, httpx.Client(base_url=s.url) as http:
        big = {"text": "a" * 10_000, "sampling_params": {"max_new_tokens": 1}}
        r = http.post("/generate", json=big)
        assert r.status_code == 413 and "4096" in r.json()["error"]["message"]

        def chunks():  # no Content-Length: the limit must hold while reading
            for _ in range(10):
                yield b" " * 1000

        r = http.post("/generate", content=chunks())
        assert r.status_code == 413
        check_still_serving(http)


def test_api_key_guards_all_but_health(engine):
    with LiveServer(engine, api_key="sekrit") as s, httpx.Client(base_url=s.url) as http:
        assert http.get("/health").status_code == 200
        assert http.get("/health_generate").status_code == 200
        for method, path in [
            ("POST", "/generate"),
            ("GET", "/v1/models"),
            ("GET", "/metrics"),
            ("GET", "/server_info"),
            ("POST", "/flush_cache"),
        ]:
            r = http.request(method, path, json=OK)
            assert r.status_code == 401, path
            assert "authorization" in r.json()["error"]["message"]
            r = http.request(method, path, json=OK, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401, path
        auth = {"Authorization": "Bearer sekrit"}
        assert http.post("/generate", json=OK, headers=auth).status_code == 200
        assert http.get("/v1/models", headers=auth).status_code == 200
        info = http.get("/server_info", headers=auth).json()
        assert info["api_key"] == "set"  # never the key itself
