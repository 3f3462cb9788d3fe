"""A request that runs beside a hostile one and must come out exactly as it does alone."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx

PROMPT = "Once upon a time"


class Bystander:
    """A greedy stream over /generate, started before the hostile request and checked
    after it: `with Bystander(server, engine): <hostile request>`. On leaving, the stream
    must have finished with the same tokens as the engine gives the same request alone
    (asked over HTTP first when the engine is in another process: `engine=None`), within
    `timeout` seconds (an engine that died would leave it hanging)."""

    def __init__(
        self,
        server: Any,
        engine: Any,
        tokens: int = 120,
        prompt: str = PROMPT,
        timeout: float = 60.0,
    ) -> None:
        self.url = server if isinstance(server, str) else server.url
        self.params = {"max_new_tokens": tokens, "temperature": 0, "ignore_eos": True}
        self.prompt = prompt
        self.timeout = timeout
        if engine is not None:
            alone = engine.generate(prompt, self.params)
            self.expected_text, self.expected_ids = alone.text, alone.output_ids
        else:
            body = {"text": prompt, "sampling_params": self.params}
            alone = httpx.post(f"{self.url}/generate", json=body, timeout=timeout).json()
            self.expected_text, self.expected_ids = alone["text"], alone["output_ids"]
        self.events: list[dict] = []
        self.started = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = {"text": self.prompt, "sampling_params": self.params, "stream": True}
        try:
            with httpx.Client(base_url=self.url, timeout=self.timeout) as c:
                with c.stream("POST", "/generate", json=body) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {"):
                            self.events.append(json.loads(line[6:]))
                            self.started.set()
        except BaseException as exc:  # reported by check()
            self.error = exc
        finally:
            self.started.set()

    def __enter__(self) -> Bystander:
        self._thread.start()
        assert self.started.wait(self.timeout), "the bystander never started"
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        self._thread.join(self.timeout)
        if kind is None:
            self.check()

    def check(self) -> None:
        assert not self._thread.is_alive(), "the bystander is still waiting: the engine stalled"
        assert self.error is None, f"the bystander failed: {self.error!r}"
        last = self.events[-1]
        assert last["meta_info"]["finish_reason"]["type"] == "length", last["meta_info"]
        assert last["text"] == self.expected_text
        assert last["output_ids"] == self.expected_ids
