"""SGLang's native endpoints: /generate and the calls its frontend and tools make around it.

Responses keep SGLang's shapes (sglang.md section 2): `{"text", "output_ids", "meta_info"}`
per request, a list for a batch or n > 1, and for streams cumulative text per event unless
the server runs with `--incremental-streaming-output`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ..engine_inputs import RequestSpec
from ..outputs import GenerateOutput, StreamChunk
from .context import ServerContext, handler
from .engine_client import RequestGroup
from .http_io import HTTPError, json_response, read_json
from .native_request import parse_generate

HEALTH_GENERATE_TIMEOUT = 20.0


def response_dict(out: GenerateOutput) -> dict[str, Any]:
    """SGLang's per-request response: as `GenerateOutput.to_dict`, but the EOS or stop
    token that ended the request is trimmed from `output_ids` (completion_tokens and the
    logprobs still count it), as SGLang does."""
    d = out.to_dict()
    matched = out.finish_reason.matched
    ids = out.output_ids
    if out.finish_reason.type == "stop" and isinstance(matched, int) and ids and ids[-1] == matched:
        d["output_ids"] = ids[:-1]
    return d


class StreamState:
    """One request's stream: what has been sent so far, to send cumulative events."""

    def __init__(self, spec: RequestSpec, incremental: bool) -> None:
        self.rid = spec.rid
        self.prompt_tokens = len(spec.prompt_ids)
        self.incremental = incremental
        self.logprobs = spec.logprob.enabled
        self.top = spec.logprob.top_k > 0
        self.text = ""
        self.ids: list[int] = []
        self.out_lp: list[list] = []
        self.out_top: list[list[list]] = []
        self.in_lp: list[list] = []
        self.in_top: list[Any] = []

    def event(self, chunk: StreamChunk) -> dict[str, Any]:
        if chunk.output is not None:
            return self._final(chunk)
        self.text += chunk.text
        self.ids += chunk.token_ids
        meta: dict[str, Any] = {
            "id": self.rid,
            "finish_reason": None,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": len(self.ids),
            "cached_tokens": chunk.cached_tokens,
        }
        if self.logprobs:
            self.in_lp += chunk.input_logprobs or []
            self.out_lp += chunk.output_logprobs or []
            new_lp = chunk.output_logprobs or []
            meta["input_token_logprobs"] = self.in_lp
            meta["output_token_logprobs"] = new_lp if self.incremental else self.out_lp
            meta["output_token_logprobs_length"] = len(self.out_lp)
            if self.top:
                self.in_top += chunk.input_top_logprobs or []
                self.out_top += chunk.output_top_logprobs or []
                meta["input_top_logprobs"] = self.in_top
                meta["output_top_logprobs"] = (
                    chunk.output_top_logprobs or [] if self.incremental else self.out_top
                )
        if self.incremental:
            return {"text": chunk.text, "output_ids": chunk.token_ids, "meta_info": meta}
        return {"text": self.text, "output_ids": self.ids, "meta_info": meta}

    def _final(self, chunk: StreamChunk) -> dict[str, Any]:
        assert chunk.output is not None
        d = response_dict(chunk.output)
        if self.incremental:
            sent = len(self.ids)
            d["text"] = chunk.text
            d["output_ids"] = d["output_ids"][sent:]
            meta = d["meta_info"]
            if "output_token_logprobs" in meta:
                meta["output_token_logprobs"] = meta["output_token_logprobs"][sent:]
            if "output_top_logprobs" in meta:
                meta["output_top_logprobs"] = meta["output_top_logprobs"][sent:]
        return d


class NativeAPI:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[Route]:
        return [
            Route("/generate", handler(self.generate), methods=["POST", "PUT"]),
            Route("/model_info", handler(self.model_info), methods=["GET"]),
            Route("/get_model_info", handler(self.model_info), methods=["GET"]),
            Route("/server_info", handler(self.server_info), methods=["GET"]),
            Route("/get_server_info", handler(self.server_info), methods=["GET"]),
            Route("/flush_cache", handler(self.flush_cache), methods=["GET", "POST"]),
            Route("/health", handler(self.health), methods=["GET"]),
            Route("/health_generate", handler(self.health_generate), methods=["GET"]),
            Route("/abort_request", handler(self.abort_request), methods=["POST"]),
            Route("/tokenize", handler(self.tokenize), methods=["POST"]),
            Route("/detokenize", handler(self.detokenize), methods=["POST"]),
        ]

    async def generate(self, request: Request) -> Response:
        body = await read_json(request, self.ctx.args.max_body_bytes)
        parsed = parse_generate(body)
        specs, single = await self.ctx.client.prepare(**parsed.prepare_kwargs)
        if parsed.stream:
            events = partial(self._stream, specs=specs, single=single)
            return self.ctx.client.stream(specs, events)  # type: ignore[return-value]
        outputs = await self.ctx.client.outputs(request, specs)
        dicts = [response_dict(out) for out in outputs]
        return json_response(dicts[0] if single and len(dicts) == 1 else dicts)

    async def _stream(
        self, group: RequestGroup, specs: list[RequestSpec], single: bool
    ) -> AsyncIterator[Any]:
        incremental = self.ctx.args.incremental_streaming_output
        states = [StreamState(spec, incremental) for spec in specs]
        try:
            async for i, chunk in group:
                event = states[i].event(chunk)  # type: ignore[arg-type]
                if not (single and len(specs) == 1):
                    event["index"] = i
                yield event
        finally:
            group.close()

    async def model_info(self, request: Request) -> Response:
        engine = self.ctx.engine
        tok = engine.tokenizer
        # The chat template and special tokens let loomlm's RuntimeEndpoint write the same
        # role text as a program on the in-process engine (SGLang's client ignores them).
        template = self.ctx.chat_template or getattr(tok, "chat_template", None)
        return json_response(
            {
                "chat_template": template if isinstance(template, str) else None,
                "bos_token": getattr(tok, "bos_token", None),
                "eos_token": getattr(tok, "eos_token", None),
                "model_path": self.ctx.args.model or str(engine.model_dir),
                "tokenizer_path": self.ctx.args.tokenizer
                or self.ctx.args.model
                or str(engine.model_dir),
                "served_model_name": self.ctx.model_name,
                "is_generation": True,
                "max_context_length": engine.max_context,
                "architectures": [engine.model_config.architecture],
            }
        )

    async def server_info(self, request: Request) -> Response:
        from importlib.metadata import version

        stats = await self.ctx.client.call(self.ctx.engine.stats)
        info = self.ctx.args.public()
        info.update(
            version=version("loomlm"),
            startup_time=self.ctx.started,
            max_total_num_tokens=stats["kv_slots_total"],
            context_length=self.ctx.engine.max_context,
            internal_states=[stats],
        )
        return json_response(info)

    async def flush_cache(self, request: Request) -> Response:
        if await self.ctx.client.call(self.ctx.engine.flush_cache):
            return PlainTextResponse("Cache flushed.\n")
        raise HTTPError(400, "flush_cache: refused while requests are in flight")

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def health_generate(self, request: Request) -> Response:
        """Healthy when the engine can run a one-token request end to end."""
        if not self.ctx.engine.alive:
            raise HTTPError(503, "the engine has stopped")
        specs, _ = await self.ctx.client.prepare(
            input_ids=[0], sampling_params={"max_new_tokens": 1, "temperature": 0}
        )
        try:
            await asyncio.wait_for(self.ctx.client.generate(specs), HEALTH_GENERATE_TIMEOUT)
        except asyncio.TimeoutError:
            raise HTTPError(503, "the engine did not answer in time") from None
        return Response(status_code=200)

    async def abort_request(self, request: Request) -> Response:
        body = await read_json(request, self.ctx.args.max_body_bytes)
        abort_all = body.get("abort_all", False)
        if not isinstance(abort_all, bool):
            raise HTTPError(400, f"abort_all: expected true or false, got {abort_all!r}")
        if abort_all:
            self.ctx.client.abort_all()
            return json_response({"success": True})
        rid = body.get("rid")
        if not isinstance(rid, str) or not rid:
            raise HTTPError(400, "rid: expected the id of a request in flight (a string)")
        return json_response({"success": self.ctx.client.abort(rid)})

    async def tokenize(self, request: Request) -> Response:
        body = await read_json(request, self.ctx.args.max_body_bytes)
        tok = self.ctx.need_tokenizer("prompt")
        prompt = body.get("prompt")
        special = body.get("add_special_tokens", True)
        if not isinstance(special, bool):
            raise HTTPError(400, "add_special_tokens: expected true or false")
        single = isinstance(prompt, str)
        prompts = [prompt] if single else prompt
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise HTTPError(400, "prompt: expected a string or a list of strings")
        ids = [tok.encode(p, add_special_tokens=special) for p in prompts]
        return json_response(
            {
                "tokens": ids[0] if single else ids,
                "count": len(ids[0]) if single else [len(i) for i in ids],
                "max_model_len": self.ctx.engine.max_context,
            }
        )

    async def detokenize(self, request: Request) -> Response:
        body = await read_json(request, self.ctx.args.max_body_bytes)
        tok = self.ctx.need_tokenizer("tokens")
        tokens = body.get("tokens")
        skip = body.get("skip_special_tokens", True)
        if not isinstance(skip, bool):
            raise HTTPError(400, "skip_special_tokens: expected true or false")
        single = isinstance(tokens, list) and all(_is_id(t) for t in tokens)
        batch = [tokens] if single else tokens
        if not isinstance(batch, list) or not all(
            isinstance(b, list) and all(_is_id(t) for t in b) for b in batch
        ):
            raise HTTPError(400, "tokens: expected token ids or a list of lists of them")
        vocab = self.ctx.engine.model_config.vocab_size
        bad = next((t for b in batch for t in b if t >= vocab), None)
        if bad is not None:
            raise HTTPError(400, f"tokens: id {bad} is out of range [0, {vocab})")
        texts = [tok.decode(b, skip_special_tokens=skip) for b in batch]
        return json_response({"text": texts[0] if single else texts})


def _is_id(t: Any) -> bool:
    return isinstance(t, int) and not isinstance(t, bool) and t >= 0
