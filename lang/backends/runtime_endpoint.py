"""The HTTP backend: programs talk to `loomlm serve` (or an SGLang server) over SGLang's
native protocol: /generate, /tokenize, /get_model_info and /flush_cache."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ..chat_template import ChatTemplate, resolve_template
from ..runtime.sampling.generate_request import GenerateRequest
from ..runtime.sampling.sampling_params import SamplingParams
from .base import Backend, LogprobEntry, Meta


class RuntimeEndpoint(Backend):
    """Args:
    base_url: the server, e.g. "http://127.0.0.1:30000".
    api_key: sent as a bearer token, for servers started with --api-key.
    chat_template: a ChatTemplate or a template name; default: the chat template the server
        reports for its model, else the plain default.
    max_connections: HTTP connections kept open to the server; programs beyond this many
        wait for one.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        chat_template: ChatTemplate | str | None = None,
        max_connections: int = 512,
    ) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(None, connect=10.0),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
        self.model_info = self._call("GET", "/get_model_info")
        self._template = resolve_template(
            chat_template,
            self.model_info.get("chat_template"),
            self.model_info.get("bos_token"),
            self.model_info.get("eos_token"),
        )

    @property
    def chat_template(self) -> ChatTemplate:
        return self._template

    def get_model_name(self) -> str:
        return self.model_info.get("model_path", "")

    def generate(self, request: GenerateRequest) -> tuple[str | list[str], Meta | list[Meta]]:
        out = self._call("POST", "/generate", request.to_json())
        if isinstance(out, list):
            return [o["text"] for o in out], [o["meta_info"] for o in out]
        return out["text"], out["meta_info"]

    def generate_stream(self, request: GenerateRequest) -> Iterator[tuple[str, Meta]]:
        body = {**request.to_json(), "stream": True}
        with self._client.stream("POST", "/generate", json=body) as response:
            if response.status_code != 200:
                response.read()
                _raise_for(response, "/generate")
            sent = 0
            meta: dict[str, Any] = {}
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                event = json.loads(payload)
                if "error" in event:
                    raise RuntimeError(f"/generate: {_message(event)}")
                # Events carry the whole text so far (SGLang's default streaming) and the
                # logprobs of their new tokens only: the meta info so far merges them.
                chunk = event["text"][sent:]
                sent += len(chunk)
                yield chunk, _merge_meta(meta, event["meta_info"])

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        out = self._call("POST", "/tokenize", {"prompt": texts, "add_special_tokens": True})
        return out["tokens"]

    def prompt_logprobs(self, input_ids: list[list[int]], start: int) -> list[list[LogprobEntry]]:
        request = GenerateRequest(
            input_ids=input_ids,
            sampling_params=SamplingParams(max_new_tokens=0),
            return_logprob=True,
            logprob_start_len=start,
            return_text_in_logprobs=True,
        )
        out = self._call("POST", "/generate", request.to_json())
        return [o["meta_info"]["input_token_logprobs"] for o in out]

    def flush_cache(self) -> bool:
        return self._client.post("/flush_cache").status_code == 200

    def get_server_info(self) -> dict[str, Any]:
        return self._call("GET", "/server_info")

    def shutdown(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self._client.request(method, path, json=body)
        if response.status_code != 200:
            _raise_for(response, path)
        return response.json()


_DELTA_KEYS = (
    "input_token_logprobs",
    "output_token_logprobs",
    "input_top_logprobs",
    "output_top_logprobs",
)


def _merge_meta(merged: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """Fold one stream event's meta info into `merged` (logprob lists extend, the rest is
    replaced) and return it: the meta info of the stream so far."""
    for key, value in event.items():
        if key in _DELTA_KEYS and isinstance(value, list):
            merged.setdefault(key, []).extend(value)
        else:
            merged[key] = value
    return merged


def _message(body: Any) -> str:
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error)


def _raise_for(response: Any, path: str) -> None:
    try:
        message = _message(response.json())
    except ValueError:
        message = response.text
    if response.status_code == 400:
        raise ValueError(message)  # the request's fault, as the in-process engine reports it
    raise RuntimeError(f"{path}: HTTP {response.status_code}: {message}")
