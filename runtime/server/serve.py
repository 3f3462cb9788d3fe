"""Running the app: uvicorn on the configured address. On SIGINT/SIGTERM it stops
accepting connections, lets in-flight requests finish for `shutdown_timeout` seconds, then
aborts the rest (their streams end with an `abort` event), and exits with status 0.

Should the engine thread die, the server stops by itself and exits with status 1: a server
that answers /health but can generate nothing is worse than one a supervisor restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator

import torch
import uvicorn

from ..engine.engine import Engine
from .app import create_app
from .args import ServerArgs
from .http_protocol import protocol_with_header_timeout

logger = logging.getLogger("loomlm.server")

# After the abort, what aborted streams get to send their last event and close.
_AFTER_ABORT = 5.0


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, engine: Engine, abort_after: float) -> None:
        super().__init__(config)
        self.engine = engine
        self.abort_after = abort_after
        self.engine_died = False

    async def on_tick(self, counter: int) -> bool:
        # uvicorn calls this every 0.1 s.
        if not self.engine_died and not self.engine.alive and self.engine.error is not None:
            logger.critical("the engine thread died (%s); stopping", self.engine.error)
            self.engine_died = True
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.abort_after, self._abort_in_flight)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()

    def _abort_in_flight(self) -> None:
        logger.warning("shutdown: aborting the requests still in flight")
        self.engine.abort_all("the server is shutting down")

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own version re-raises the signal once shut down, which kills the
        # process before the engine is stopped; here a signal only starts the shutdown.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def uvicorn_server(engine: Engine, args: ServerArgs) -> _Server:
    config = uvicorn.Config(
        create_app(engine, args),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,  # the engine client logs a line per request, with its tokens
        # uvicorn types it as int but waits any number of seconds
        timeout_graceful_shutdown=args.shutdown_timeout + _AFTER_ABORT,  # type: ignore[arg-type]
        lifespan="off",
        http=protocol_with_header_timeout(args.header_timeout),
    )
    return _Server(config, engine, args.shutdown_timeout)


def run_server(engine: Engine, args: ServerArgs) -> int:
    """Serve `engine` until SIGINT/SIGTERM (0) or until the engine thread dies (1)."""
    server = uvicorn_server(engine, args)
    where = f"http://{args.host}:{args.port}"
    logger.info("serving %s on %s", args.engine.model or "the built-in model", where)
    server.run()
    return 1 if server.engine_died else 0


def set_model_threads(device: str | None, cpu_threads: int | None) -> None:
    """On CPU, the model's intra-op threads leave one core to the HTTP event loop: with a
    thread per core, every parallel op waited for a worker the event loop had displaced, and
    steps took 10-30x longer while requests arrived (a canary's latency under 200 heavy
    requests went from 0.64 s to 1.5-4 s on 2 cores).

    Set before the engine is built: the compiled forward graph fixes its thread count when
    it is compiled, so a change afterwards would reach the matrix products but not it."""
    on_cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    if on_cpu:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(cpu_threads or max(1, (cores or 1) - 1))


def settle_process() -> None:
    """Once the engine is loaded, the objects alive (the model, the libraries: ~500k of them)
    are moved out of the garbage collector's reach: a full collection scanning them paused
    every thread for up to 2.8 s under load."""
    gc.collect()
    gc.freeze()


def serve(args: ServerArgs) -> None:
    """Load the engine, serve, then stop everything; exits 1 if the engine died."""
    configure_logging(args.log_level)
    set_model_threads(args.engine.device, args.cpu_threads)
    engine = Engine.from_config(args.engine)
    settle_process()
    logger.info("model threads: %d", torch.get_num_threads())
    try:
        status = run_server(engine, args)
    finally:
        engine.shutdown()
        logger.info("stopped")
    if status:
        sys.exit(status)
