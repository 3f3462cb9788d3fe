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

from ..engine.inputs import RequestSpec
from ..engine.outputs import GenerateOutput, StreamChunk
from ..sampling.generate_request import GenerateRequest
from ..utils.checks import shown
from .context import ServerContext, handler
from .engine_client import INLINE_IDS, INLINE_TEXT_CHARS, RequestGroup, off_loop
from .http_io import HTTPError, json_response
from .native_request import parse_generate

HEALTH_GENERATE_TIMEOUT = 20.0
HEALTH_PARAMS = {"max_new_tokens": 1, "temperature": 0}
# Ids one /detokenize call may decode: 2M took 1.2 s of a worker thread's time.
MAX_DETOKENIZE_IDS = 1 << 20


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


_LOGPROB_KEYS = (
    "input_token_logprobs",
    "output_token_logprobs",
    "input_top_logprobs",
    "output_top_logprobs",
)


class StreamState:
    """One request's stream: what has been sent so far.

    Text and ids are cumulative per event (what SGLang's client reads), or deltas with
    `--incremental-streaming-output`. Logprob lists are always deltas: each event carries
    the entries of its new tokens (the prompt's come once, in the first event that has
    them), so a stream costs what the unstreamed response does instead of growing with the
    square of its length; SGLang's client merges them (`_merge_stream_meta_info`), and
    `output_token_logprobs_length` stays cumulative.
    """

    def __init__(self, spec: RequestSpec, incremental: bool) -> None:
        self.rid = spec.rid
        self.prompt_tokens = len(spec.prompt_ids)
        self.incremental = incremental
        self.logprobs = spec.logprob.enabled
        self.top = spec.logprob.top_k > 0
        self.text = ""
        self.ids: list[int] = []
        self.output_sent = 0  # output logprob entries sent
        self.input_sent = False

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
            new = chunk.output_logprobs or []
            self.output_sent += len(new)
            meta["input_token_logprobs"] = chunk.input_logprobs or []
            meta["output_token_logprobs"] = new
            meta["output_token_logprobs_length"] = self.output_sent
            if self.top:
                meta["input_top_logprobs"] = chunk.input_top_logprobs or []
                meta["output_top_logprobs"] = chunk.output_top_logprobs or []
            self.input_sent = self.input_sent or chunk.input_logprobs is not None
        if self.incremental:
            return {"text": chunk.text, "output_ids": chunk.token_ids, "meta_info": meta}
        return {"text": self.text, "output_ids": self.ids, "meta_info": meta}

    def _final(self, chunk: StreamChunk) -> dict[str, Any]:
        assert chunk.output is not None
        d = response_dict(chunk.output)
        meta = d["meta_info"]
        if "output_token_logprobs" in meta:
            for key in _LOGPROB_KEYS:
                if key not in meta:
                    continue
                if key.startswith("input"):
                    meta[key] = [] if self.input_sent else meta[key]
                else:
                    meta[key] = meta[key][self.output_sent :]
        if self.incremental:
            d["text"] = chunk.text
            d["output_ids"] = d["output_ids"][len(self.ids) :]
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
            Route(
                "/concate_and_append_request", handler(self.concate_and_append), methods=["POST"]
            ),
        ]

    async def generate(self, request: Request) -> Response:
        body = await self.ctx.read_json(request)
        parsed = parse_generate(body)
        specs, single = await self.ctx.client.prepare(parsed)
        given = body.get("sampling_params")
        asked = [
            isinstance(p, dict) and p.get("max_new_tokens") is not None
            for p in (given if isinstance(given, list) else [given])
        ]
        specs = self.ctx.fit_context(specs, asked, "sampling_params.max_new_tokens")
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
                "model_path": str(engine.config.model or engine.model_dir),
                "tokenizer_path": str(
                    engine.config.tokenizer or engine.config.model or engine.model_dir
                ),
                "served_model_name": self.ctx.model_name,
                "is_generation": True,
                "max_context_length": engine.max_context,
                "architectures": [engine.model_config.architecture],
            }
        )

    async def server_info(self, request: Request) -> Response:
        from importlib.metadata import version

        stats = await self.ctx.client.call(self.ctx.engine.stats)
        info = self.ctx.args.public(self.ctx.engine.config)
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
        """200 while the engine thread runs; 503 once it has died (the server then exits
        non-zero, so that a supervisor restarts it)."""
        if not self.ctx.engine.alive:
            raise HTTPError(503, "the engine has stopped")
        return Response(status_code=200)

    async def health_generate(self, request: Request) -> Response:
        """Healthy when the engine can run a one-token request end to end."""
        if not self.ctx.engine.alive:
            raise HTTPError(503, "the engine has stopped")
        specs, _ = await self.ctx.client.prepare(
            GenerateRequest(input_ids=[0], sampling_params=HEALTH_PARAMS)
        )
        try:
            await asyncio.wait_for(self.ctx.client.generate(specs), HEALTH_GENERATE_TIMEOUT)
        except asyncio.TimeoutError:
            raise HTTPError(503, "the engine did not answer in time") from None
        return Response(status_code=200)

    async def abort_request(self, request: Request) -> Response:
        body = await self.ctx.read_json(request)
        abort_all = body.get("abort_all", False)
        if not isinstance(abort_all, bool):
            raise HTTPError(400, f"abort_all: expected true or false, got {shown(abort_all)}")
        if abort_all:
            self.ctx.client.abort_all()
            return json_response({"success": True})
        rid = body.get("rid")
        if not isinstance(rid, str) or not rid:
            raise HTTPError(400, "rid: expected the id of a request in flight (a string)")
        return json_response({"success": self.ctx.client.abort(rid)})

    async def concate_and_append(self, request: Request) -> Response:
        """SGLang's client calls this on `fork(...).join(mode="concate_and_append")`, after
        appending the branches' text to the parent itself, and waits for ever if it fails.
        The ids are the client's program states, not requests, and nothing needs moving: the
        parent's next /generate sends the joined text, and the radix cache already holds the
        prefix and the first branch's KV, so only the later branches are encoded again (with
        attention across branches, where SGLang's old server concatenated KV encoded apart)."""
        body = await self.ctx.read_json(request)
        src, dst = body.get("src_rids"), body.get("dst_rid")
        if not isinstance(src, list) or not all(isinstance(r, str) for r in src):
            raise HTTPError(400, f"src_rids: expected a list of strings, got {shown(src)}")
        if not isinstance(dst, str):
            raise HTTPError(400, f"dst_rid: expected a string, got {shown(dst)}")
        return json_response({"success": True})

    async def tokenize(self, request: Request) -> Response:
        body = await self.ctx.read_json(request)
        tok = self.ctx.need_tokenizer("prompt")
        prompt = body.get("prompt")
        special = body.get("add_special_tokens", True)
        if not isinstance(special, bool):
            raise HTTPError(400, "add_special_tokens: expected true or false")
        single = isinstance(prompt, str)
        prompts = [prompt] if single else prompt
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise HTTPError(400, "prompt: expected a string or a list of strings")
        bound = self.ctx.engine.limits.max_prompt_chars
        too_long = next((i for i, p in enumerate(prompts) if len(p) > bound), None)
        if too_long is not None:  # refused before the tokenizer spends seconds on it
            where = "prompt" if single else f"prompt[{too_long}]"
            raise HTTPError(
                400,
                f"{where}: {len(prompts[too_long])} characters cannot fit in the model's "
                f"context of {self.ctx.engine.max_context} tokens",
            )
        heavy = sum(len(p) for p in prompts) > INLINE_TEXT_CHARS
        ids = await off_loop(
            lambda: [tok.encode(p, add_special_tokens=special) for p in prompts], heavy
        )
        return json_response(
            {
                "tokens": ids[0] if single else ids,
                "count": len(ids[0]) if single else [len(i) for i in ids],
                "max_model_len": self.ctx.engine.max_context,
            }
        )

    async def detokenize(self, request: Request) -> Response:
        body = await self.ctx.read_json(request)
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
        total = sum(len(b) for b in batch)
        if total > MAX_DETOKENIZE_IDS:
            raise HTTPError(400, f"tokens: {total} ids; at most {MAX_DETOKENIZE_IDS} per request")
        vocab = self.ctx.engine.model_config.vocab_size
        bad = next((t for b in batch for t in b if t >= vocab), None)
        if bad is not None:
            raise HTTPError(400, f"tokens: id {bad} is out of range [0, {vocab})")
        texts = await off_loop(
            lambda: [tok.decode(b, skip_special_tokens=skip) for b in batch], total > INLINE_IDS
        )
        return json_response({"text": texts[0] if single else texts})


def _is_id(t: Any) -> bool:
    return isinstance(t, int) and not isinstance(t, bool) and t >= 0
