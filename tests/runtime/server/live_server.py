"""A real server on 127.0.0.1 for tests: uvicorn in a thread, over an engine the test owns
(so that tests can compare with `Engine.generate` and read the engine's counters)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from loomlm.runtime import Engine
from loomlm.runtime.server import ServerArgs
from loomlm.runtime.server.serve import uvicorn_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, engine: Engine, **args: Any) -> None:
        self.engine = engine
        self.args = ServerArgs(port=free_port(), log_level="warning", **args)
        self.url = f"http://127.0.0.1:{self.args.port}"
        self._server = uvicorn_server(engine, self.args)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.time() + 30
        while not self._server.started:
            assert time.time() < deadline, "the server did not start"
            assert self._thread.is_alive(), "the server thread died"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


def wait_healthy(
    url: str, timeout: float, still_starting: Callable[[], None] = lambda: None
) -> None:
    """Poll `url`/health until it answers 200; `still_starting` asserts the server lives."""
    deadline = time.time() + timeout
    while True:
        still_starting()
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.time() < deadline, "the server did not come up"
        time.sleep(0.1)


def loomlm_command() -> list[str]:
    script = Path(sys.executable).parent / "loomlm"
    if script.exists():
        return [str(script)]
    found = shutil.which("loomlm")
    assert found, "the `loomlm` console script is not installed (pip install -e .)"
    return [found]


@contextlib.contextmanager
def started_server(*flags: str) -> Iterator[str]:
    """`loomlm serve` in a process of its own, as deployed; yields its URL, and asserts on
    leaving that it is still alive."""
    port = free_port()
    command = [*loomlm_command(), "serve", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(
        [*command, *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def alive() -> None:
        assert proc.poll() is None, proc.stdout.read()

    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, 120, alive)
        yield url
        assert proc.poll() is None, "the server died"
    finally:
        proc.kill()
        proc.wait()
