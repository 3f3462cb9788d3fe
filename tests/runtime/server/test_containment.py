"""One request can fail, never the engine: fields that used to kill the engine thread are
400s, a fault in one request fails that HTTP call alone (500) while the requests batched with
it finish exactly as alone, and an engine that does die turns /health 503 and stops the
server with a non-zero status."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from loomlm.runtime import Engine
from loomlm.runtime.server import ServerArgs
from loomlm.runtime.server.serve import run_server

from ..helpers import assert_pool_whole
from .bystander import PROMPT, Bystander
from .live_server import free_port, wait_healthy

SKIP_SPECIAL = [
    ("/generate", {"text": PROMPT, "sampling_params": {"max_new_tokens": 4, "skip_special_tokens": 0}}),
    ("/generate", {"text": PROMPT, "sampling_params": {"max_new_tokens": 4, "skip_special_tokens": None}}),
    ("/v1/completions", {"prompt": PROMPT, "max_tokens": 4, "skip_special_tokens": "false"}),
]  # fmt: skip


@pytest.mark.parametrize("path,body", SKIP_SPECIAL)
def test_a_non_bool_skip_special_tokens_is_400_and_the_engine_serves_on(
    http, server, engine, path, body
):
    """Defect 1: the value reached detokenization on the engine thread, which died."""
    with Bystander(server, engine):
        r = http.post(path, json=body)
        assert r.status_code == 400, r.text
        assert "skip_special_tokens" in r.json()["error"]["message"]
    assert http.post("/generate", json={"text": PROMPT, "sampling_params": {"max_new_tokens": 2}}).status_code == 200  # fmt: skip


def test_a_schema_pattern_python_re_cannot_compile_is_checked_or_refused(http, server, engine):
    """Defect 2: `\\p{Lu}` inside a `oneOf` made the finished-document check raise on the
    engine thread. The check now matches patterns with `regex` (which knows \\p{Lu}), and a
    pattern nothing can compile is a 400 naming it."""
    import regex

    schema = {"type": "object", "properties": {"name": {"oneOf": [
        {"type": "string", "pattern": "^\\p{Lu}[a-z]{1,8}$"}, {"type": "integer"}]}},
        "required": ["name"]}  # fmt: skip
    body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 40, "json_schema": schema}}
    with Bystander(server, engine):
        r = http.post("/generate", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out
        name = json.loads(out["text"])["name"]
        assert isinstance(name, int) or regex.fullmatch("\\p{Lu}[a-z]{1,8}", name), name
        bad = {"oneOf": [{"type": "string", "pattern": "(?<=a"}, {"type": "integer"}]}
        r = http.post("/generate", json={"text": PROMPT, "sampling_params": {"json_schema": bad}})
        assert r.status_code == 400, r.text
        assert "pattern" in r.json()["error"]["message"]


def poison(engine: Engine, method: str):
    """Make the engine's `method` (the batched forward, or applying results) raise for
    requests whose id contains "poison"; returns a function that undoes it."""
    target = engine.runner if method == "forward" else engine.outputs
    original = getattr(target, method)

    def hook(*args, **kwargs):
        items = args[0] if method == "forward" else [args[0]]
        if any("poison" in item.req.rid for item in items):
            raise RuntimeError("injected fault")
        return original(*args, **kwargs)

    setattr(target, method, hook)
    return lambda: setattr(target, method, original)


@pytest.mark.parametrize("method", ["forward", "apply"])
def test_one_failing_request_fails_its_call_alone(http, server, engine, method):
    """Defect 5: a request that made the batched forward raise aborted every request
    co-scheduled with it ("internal error", with HTTP 200)."""
    undo = poison(engine, method)
    try:
        with Bystander(server, engine):
            body = {"text": "The dog", "rid": "poison-1", "sampling_params": {"max_new_tokens": 8}}
            r = http.post("/generate", json=body)
            assert r.status_code == 500, r.text
            assert "injected fault" in r.json()["error"]["message"]
            r = http.post("/generate", json={**body, "rid": "poison-2", "stream": True})
            assert r.status_code == 200  # the headers went first: the error is an event
            assert (
                '"error"' in r.text
                and "injected fault" in r.text
                and r.text.endswith("data: [DONE]\n\n")
            )
    finally:
        undo()
    assert_pool_whole(engine)


def test_top_logprobs_beyond_the_vocabulary_is_400(http, server, engine):
    """Defect 5's trigger: `topk` beyond the vocabulary raised inside the batched forward."""
    with Bystander(server, engine):
        for top in (600, 21):
            body = {"text": PROMPT, "return_logprob": True, "top_logprobs_num": top,
                    "sampling_params": {"max_new_tokens": 4}}  # fmt: skip
            r = http.post("/generate", json=body)
            assert r.status_code == 400 and "top_logprobs_num" in r.json()["error"]["message"]
        r = http.post("/v1/completions", json={"prompt": PROMPT, "logprobs": 600, "max_tokens": 2})
        assert r.status_code == 400


def test_a_dead_engine_turns_health_503_fails_calls_and_stops_the_server():
    """Defect 12: /health said 200 while the engine thread was dead, and every request hung."""
    engine = Engine()
    args = ServerArgs(port=free_port(), log_level="warning")
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(run_server(engine, args)), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{args.port}"
    try:
        wait_healthy(url, 30)
        events: list[str] = []
        failed = threading.Event()

        def long_stream() -> None:
            body = {"text": PROMPT, "stream": True,
                    "sampling_params": {"max_new_tokens": 400, "ignore_eos": True}}  # fmt: skip
            with httpx.stream("POST", f"{url}/generate", json=body, timeout=30) as r:
                for line in r.iter_lines():
                    events.append(line)
                    if '"error"' in line:
                        failed.set()

        streamer = threading.Thread(target=long_stream, daemon=True)
        streamer.start()
        while not events:
            time.sleep(0.01)
        # A fault outside any one request: the scheduler itself raises.
        engine.scheduler.schedule = lambda: (_ for _ in ()).throw(RuntimeError("injected"))
        assert failed.wait(10), "the stream in flight was left hanging"
        assert any("engine has stopped" in e for e in events if '"error"' in e)
        streamer.join(10)
        thread.join(15)  # the server stops by itself...
        assert status == [1]  # ...with a status a supervisor acts on
    finally:
        engine.shutdown()


def test_health_is_503_while_the_engine_is_dead_and_calls_fail_at_once():
    from .live_server import LiveServer

    engine = Engine()
    with LiveServer(engine) as s, httpx.Client(base_url=s.url, timeout=10) as http:

        async def keep_serving(counter: int) -> bool:  # to look at it dead
            return s._server.should_exit

        s._server.on_tick = keep_serving
        engine.scheduler.schedule = lambda: (_ for _ in ()).throw(RuntimeError("injected"))
        r = http.post("/generate", json={"text": PROMPT, "sampling_params": {"max_new_tokens": 2}})
        assert r.status_code == 503 and "engine has stopped" in r.json()["error"]["message"]
        assert http.get("/health").status_code == 503
        r = http.post("/generate", json={"text": PROMPT, "sampling_params": {"max_new_tokens": 2}})
        assert r.status_code == 503
    engine.shutdown()
