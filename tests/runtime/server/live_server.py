"""A real server on 127.0.0.1 for tests: uvicorn in a thread, over an engine the test owns
(so that tests can compare with `Engine.generate` and read the engine's counters)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

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
