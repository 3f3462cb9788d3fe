"""A client that goes away aborts its requests at once, and their KV slots come back."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from ..helpers import assert_pool_whole

# Runs to (nearly) the default model's context of 512 tokens, several seconds, unless aborted.
LONG = {"max_new_tokens": 500, "ignore_eos": True, "temperature": 0}


def wait_idle(engine, within: float) -> float:
    start = time.perf_counter()
    while True:
        stats = engine.stats()
        if stats["num_running"] == 0 and stats["num_waiting"] == 0:
            return time.perf_counter() - start
        assert time.perf_counter() - start < within, f"still running: {stats}"
        time.sleep(0.01)


@pytest.mark.parametrize(
    "path,body",
    [
        ("/generate", {"text": "Once upon a time", "sampling_params": LONG, "stream": True}),
        (
            "/v1/completions",
            {
                "prompt": "Once upon a time",
                "max_tokens": 500,
                "ignore_eos": True,
                "stream": True,
            },
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Hi"}], "ignore_eos": True, "stream": True},
        ),
    ],
)
def test_stream_disconnect_aborts_and_frees_slots(server, engine, path, body):
    before = engine.stats()["generated_tokens"]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        with client.stream("POST", path, json=body) as r:
            lines = r.iter_lines()
            events = 0
            for line in lines:
                events += line.startswith("data:")
                if events == 5:
                    break
            assert engine.stats()["num_running"] == 1
        # leaving the block closes the connection mid-stream
    wait_idle(engine, within=2.0)
    produced = engine.stats()["generated_tokens"] - before
    assert produced < 200, produced  # it stopped well before the context ran out
    assert_pool_whole(engine)


def test_non_streaming_disconnect_aborts(server, engine):
    body = json.dumps({"text": "Once upon a time", "sampling_params": LONG}).encode()
    host, port = "127.0.0.1", server.args.port
    with socket.create_connection((host, port)) as sock:
        sock.sendall(
            b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.time() + 10
        while engine.stats()["num_running"] == 0:
            assert time.time() < deadline
            time.sleep(0.01)
    wait_idle(engine, within=2.0)
    assert_pool_whole(engine)
