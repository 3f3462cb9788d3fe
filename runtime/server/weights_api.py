"""SGLang's RL endpoints over HTTP: weight updates (refit), memory release / resume, and
pause / continue generation.

`GET /get_weight_version` always answers. The others replace the model or stop it serving
everyone, and two of them make the server act on a client's behalf (connect to a trainer,
read a checkpoint), so they answer 403 unless the server was started with
`--enable-weight-updates`; then a trainer's address must be one of `--weight-sync-hosts`, and
a checkpoint must lie under `--weights-dir`.

`/update_weights_from_tensor` takes `serialized_named_tensors`: one base64 string, or a list of
them (buckets), each a safetensors file of Hugging Face-named tensors. SGLang sends pickled
tensors there; unpickling a client's bytes would run whatever code they name, so safetensors
(`load_format`, the only one accepted) is the wire format here.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..utils.checks import shown
from .context import ServerContext, handler
from .http_io import HTTPError, json_response, read_json

GROUP = "weight_update_group"


class WeightsAPI:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[Route]:
        post = ["POST"]
        return [
            Route("/get_weight_version", handler(self.get_weight_version), methods=["GET"]),
            Route("/update_weights_from_tensor", handler(self.from_tensor), methods=post),
            Route("/update_weights_from_disk", handler(self.from_disk), methods=post),
            Route("/init_weights_update_group", handler(self.init_group), methods=post),
            Route("/update_weights_from_distributed", handler(self.from_distributed), methods=post),
            Route("/destroy_weights_update_group", handler(self.destroy_group), methods=post),
            Route("/release_memory_occupation", handler(self.release), methods=post),
            Route("/resume_memory_occupation", handler(self.resume), methods=post),
            Route("/pause_generation", handler(self.pause), methods=post),
            Route("/continue_generation", handler(self.continue_), methods=post),
        ]

    async def get_weight_version(self, request: Request) -> Response:
        return json_response({"weight_version": self.ctx.engine.get_weight_version()})

    async def from_tensor(self, request: Request) -> Response:
        self._allowed()
        args = self.ctx.args
        body = await read_json(request, args.max_weight_update_bytes, args.body_timeout)
        load_format = body.get("load_format") or "safetensors"
        if load_format != "safetensors":
            raise HTTPError(
                400, f'load_format: {shown(load_format)} is not accepted; expected "safetensors"'
            )
        named = await self.ctx.client.call(_decode_buckets, body.get("serialized_named_tensors"))
        flush, version = _flush_and_version(body)
        engine = self.ctx.engine
        new = await self._update(engine.update_weights_from_tensor, named, flush, version)
        return _done(new, f"updated {len(named)} tensors")

    async def from_disk(self, request: Request) -> Response:
        self._allowed()
        body = await self.ctx.read_json(request)
        path = body.get("model_path")
        if not isinstance(path, str) or not path:
            raise HTTPError(400, "model_path: expected a checkpoint directory (a string)")
        root = self.ctx.args.weights_dir
        if root is None:
            raise HTTPError(
                403, "model_path: this server reads no checkpoints for clients (--weights-dir)"
            )
        resolved = (Path(root) / path).resolve()
        if not resolved.is_relative_to(Path(root).resolve()):
            raise HTTPError(
                400, f"model_path: {shown(path)} is not under the server's --weights-dir"
            )
        flush, version = _flush_and_version(body)
        new = await self._update(self.ctx.engine.update_weights_from_disk, resolved, flush, version)
        return _done(new, f"loaded {path}")

    async def init_group(self, request: Request) -> Response:
        self._allowed()
        body = await self.ctx.read_json(request)
        address = body.get("master_address")
        hosts = [h.strip() for h in self.ctx.args.weight_sync_hosts.split(",") if h.strip()]
        if address not in hosts:
            raise HTTPError(
                400,
                f"master_address: {shown(address)} is not one of the server's "
                f"--weight-sync-hosts ({', '.join(hosts)})",
            )
        fields = [
            _int(body, "master_port"),
            _int(body, "rank_offset"),
            _int(body, "world_size"),
            _str(body, "group_name", GROUP),
            _str(body, "backend", "gloo"),
        ]
        await self._update(self.ctx.engine.init_weights_update_group, address, *fields)
        return json_response({"success": True, "message": "joined the weight update group"})

    async def from_distributed(self, request: Request) -> Response:
        self._allowed()
        body = await self.ctx.read_json(request)
        names, dtypes, shapes = (body.get(k) for k in ("names", "dtypes", "shapes"))
        for key, value in (("names", names), ("dtypes", dtypes), ("shapes", shapes)):
            if not isinstance(value, list) or not value:
                raise HTTPError(400, f"{key}: expected a non-empty list, one entry per tensor")
        assert isinstance(shapes, list)
        for i, shape in enumerate(shapes):
            if not isinstance(shape, list) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
            ):
                raise HTTPError(400, f"shapes[{i}]: expected a list of sizes, got {shown(shape)}")
        flush, version = _flush_and_version(body)
        group = _str(body, "group_name", GROUP)
        engine = self.ctx.engine
        new = await self._update(
            engine.update_weights_from_distributed, names, dtypes, shapes, group, flush, version
        )
        return _done(new, f"received {len(names)} tensors")  # type: ignore[arg-type]

    async def destroy_group(self, request: Request) -> Response:
        self._allowed()
        body = await self.ctx.read_json(request)
        group = _str(body, "group_name", GROUP)
        await self._update(self.ctx.engine.destroy_weights_update_group, group)
        return json_response({"success": True, "message": f"left {group}"})

    async def release(self, request: Request) -> Response:
        self._allowed()
        tags = _tags(await self.ctx.read_json(request))
        freed = await self._update(self.ctx.engine.release_memory_occupation, tags)
        return json_response({"success": True, "message": f"released {freed} bytes"})

    async def resume(self, request: Request) -> Response:
        self._allowed()
        tags = _tags(await self.ctx.read_json(request))
        await self._update(self.ctx.engine.resume_memory_occupation, tags)
        return json_response({"success": True, "message": "resumed"})

    async def pause(self, request: Request) -> Response:
        self._allowed()
        body = await self.ctx.read_json(request)
        mode = _str(body, "mode", "abort")
        count = await self._update(self.ctx.engine.pause_generation, mode)
        return json_response({"success": True, "message": f"paused ({mode}: {count} requests)"})

    async def continue_(self, request: Request) -> Response:
        self._allowed()
        await self._update(self.ctx.engine.continue_generation)
        return json_response({"success": True, "message": "generation continues"})

    def _allowed(self) -> None:
        if not self.ctx.args.enable_weight_updates:
            raise HTTPError(403, "weight updates are off on this server (--enable-weight-updates)")

    async def _update(self, fn: Any, *args: Any) -> Any:
        """An engine call in a worker thread; its ValueError (bad input) becomes a 400."""
        try:
            return await self.ctx.client.call(fn, *args)
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None


def _decode_buckets(buckets: Any) -> list[tuple[str, torch.Tensor]]:
    if isinstance(buckets, str):
        buckets = [buckets]
    if not isinstance(buckets, list) or not buckets:
        raise HTTPError(
            400,
            "serialized_named_tensors: expected a base64 safetensors payload, or a list of them",
        )
    named: list[tuple[str, torch.Tensor]] = []
    for i, bucket in enumerate(buckets):
        if not isinstance(bucket, str):
            raise HTTPError(400, f"serialized_named_tensors[{i}]: expected a base64 string")
        try:
            tensors = load_safetensors(base64.b64decode(bucket, validate=True))
        except (binascii.Error, ValueError, SafetensorError) as exc:
            raise HTTPError(
                400, f"serialized_named_tensors[{i}]: not base64 safetensors data ({exc})"
            ) from None
        named.extend(tensors.items())
    return named


def _tags(body: dict[str, Any]) -> list[str] | None:
    tags = body.get("tags")
    if tags is not None and (
        not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)
    ):
        raise HTTPError(400, f'tags: expected a list of "weights" / "kv_cache", got {shown(tags)}')
    return tags


def _flush_and_version(body: dict[str, Any]) -> tuple[bool, str | None]:
    flush = body.get("flush_cache", True)
    if not isinstance(flush, bool):
        raise HTTPError(400, f"flush_cache: expected true or false, got {shown(flush)}")
    version = body.get("weight_version")
    if version is not None and not isinstance(version, str):
        raise HTTPError(400, f"weight_version: expected a string, got {shown(version)}")
    return flush, version


def _int(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise HTTPError(400, f"{key}: expected an integer, got {shown(value)}")
    return value


def _str(body: dict[str, Any], key: str, default: str) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or not value:
        raise HTTPError(400, f"{key}: expected a non-empty string, got {shown(value)}")
    return value


def _done(version: str, message: str) -> Response:
    return json_response({"success": True, "message": message, "weight_version": version})
