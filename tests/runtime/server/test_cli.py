"""`loomlm serve` as users run it: the console script, a request log line, the API key, and
a clean exit on SIGTERM that finishes short requests and aborts long ones."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
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

        threads = [streamer(40, short), streamer(8000, long)]  # what the context holds
        for t in threads:
            t.start()
        deadline = time.time() + 60
        while len(long) < 3:
            assert time.time() < deadline and threads[1].is_alive(), long
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


def test_serve_help_gives_every_flag_help_and_each_default_once_and_true():
    """`loomlm serve --help` printed some defaults twice ("(default: loopback only)
    (default: 127.0.0.1)"), said --model defaults to None, and left flags without help."""
    import argparse

    from loomlm.runtime.server.args import add_arguments

    parser = argparse.ArgumentParser(prog="loomlm serve")
    add_arguments(parser)
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        text = action.help or ""
        assert text.strip(), f"{action.option_strings[0]} has no help"
        assert text.count("default") <= 1, f"{action.option_strings[0]}: {text}"
        assert "(default: None)" not in text
    helps = {a.option_strings[0]: a.help for a in parser._actions if a.option_strings}
    assert helps["--port"] == "port to listen on (default: 30000)"
    assert helps["--host"] == "address to bind (default: loopback only)"
    assert helps["--log-level"] == "logging level (default: info)"
    assert "(default" not in helps["--model"]  # its help says what no model means
    done = subprocess.run(
        [sys.executable, "-m", "loomlm.runtime.server", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "--port PORT" in done.stdout
    assert "(default: None)" not in done.stdout
