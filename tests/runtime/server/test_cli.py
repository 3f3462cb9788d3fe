"""`loomlm serve` as users run it: the console script, a request log line, the API key, and
a clean exit on SIGTERM that finishes short requests and aborts long ones."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import httpx

from .live_server import free_port, loomlm_command, wait_healthy

PROMPT = "Once upon a time"


def stream_lines(url: str, body: dict, out: list) -> None:
    headers = {"Authorization": "Bearer k3y"}
    with httpx.stream("POST", f"{url}/generate", json=body, headers=headers, timeout=60) as r:
        out.extend(line for line in r.iter_lines() if line)


def test_serve_logs_guards_and_shuts_down_cleanly():
    port = free_port()
    proc = subprocess.Popen(
        [
            *loomlm_command(),
            "serve",
            "--port",
            str(port),
            "--api-key",
            "k3y",
            "--shutdown-timeout",
            "1",
            # Room for the long stream to outlast the grace period (the model's own 512
            # tokens took under a second on a quiet machine, and it ended by "length").
            "--context-length",
            "8192",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"

    def alive() -> None:
        assert proc.poll() is None, proc.stdout.read()

    try:
        wait_healthy(url, 120, alive)
        body = {"text": PROMPT, "rid": "logged-1", "sampling_params": {"max_new_tokens": 7}}
        assert httpx.post(f"{url}/generate", json=body).status_code == 401
        r = httpx.post(f"{url}/generate", json=body, headers={"Authorization": "Bearer k3y"})
        assert r.status_code == 200

        short, long = [], []

        def streamer(max_new_tokens: int, out: list) -> threading.Thread:
            params = {"ignore_eos": True, "temperature": 0, "max_new_tokens": max_new_tokens}
            body = {"text": PROMPT, "stream": True, "sampling_params": params}
            return threading.Thread(target=stream_lines, args=(url, body, out))

        threads = [streamer(40, short), streamer(100000, long)]
        for t in threads:
            t.start()
        while len(long) < 3:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        for t in threads:
            t.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read()
    # the short stream finished during the graceful period, the long one was aborted
    assert short[-1] == long[-1] == "data: [DONE]"
    assert json.loads(short[-2][6:])["meta_info"]["finish_reason"]["type"] == "length"
    last = json.loads(long[-2][6:])["meta_info"]["finish_reason"]
    assert last["type"] == "abort" and "shutting down" in last["message"]
    assert "request logged-1: 5 prompt (0 cached) + 7 completion tokens" in log
    assert "127.0.0.1" in log and "stopped" in log
