"""`loomlm serve` options: the server's own, and the engine's (SGLang's flag names)."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..request_limits import RequestLimits

# The API key may come from the environment instead of the command line, where every user
# of the machine can read it in the process list.
API_KEY_ENV = "LOOMLM_API_KEY"

# Engine keyword arguments that `loomlm serve` passes through, with their flags' help.
ENGINE_OPTIONS: dict[str, str] = {
    "dtype": "auto (the checkpoint's), float32, bfloat16 or float16",
    "device": "cpu, cuda...; default: CUDA when available",
    "max_total_tokens": "KV pool size in tokens (default: a share of free memory)",
    "mem_fraction": "share of free memory the KV pool may take",
    "max_running_requests": "most requests decoding at once",
    "max_prefill_tokens": "prompt tokens per step",
    "chunked_prefill_size": "largest prompt piece per step while others decode; -1: off",
    "schedule_policy": "lpm, dfs-weight or fcfs",
    "disable_radix_cache": "keep no KV between requests",
    "context_length": "override the model's context length",
    "tokenizer": "tokenizer directory (default: the model's)",
    "skip_tokenizer_init": "token ids only: no text in, no text out",
    "grammar_backend": "auto, llguidance, outlines or xgrammar",
    "disable_jump_forward": "sample forced constrained text token by token",
    "grammar_compile_timeout": "seconds a constraint may take to compile",
    "grammar_cache_bytes": "budget of the compiled-grammar cache (estimated bytes)",
    "seed": "seed of requests that give none",
}


@dataclass(slots=True)
class ServerArgs:
    model: str | None = None  # None: the built-in TinyStories 260K model
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: str | None = None
    api_key_file: str | None = None  # a file holding the key (read once, at start)
    served_model_name: str | None = None
    chat_template: str | None = None  # a Jinja template, or a file holding one
    max_body_bytes: int = 16 << 20
    # Seconds a client may take to send a request's headers, then its body: a client that
    # trickles them holds a connection and its buffers (slowloris).
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    incremental_streaming_output: bool = False
    shutdown_timeout: float = 10.0
    cpu_threads: int | None = None  # the model's threads on CPU; None: all cores but one
    log_level: str = "info"
    dtype: str = "auto"
    device: str | None = None
    max_total_tokens: int | None = None
    mem_fraction: float | None = None
    max_running_requests: int = 256
    max_prefill_tokens: int = 8192
    chunked_prefill_size: int | None = None
    schedule_policy: str = "lpm"
    disable_radix_cache: bool = False
    context_length: int | None = None
    tokenizer: str | None = None
    skip_tokenizer_init: bool = False
    grammar_backend: str = "auto"
    disable_jump_forward: bool = False
    grammar_compile_timeout: float = 10.0
    grammar_cache_bytes: int = 256 << 20
    seed: int = 0
    limits: RequestLimits = field(default_factory=RequestLimits)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port: expected 1-65535, got {self.port}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes: expected >= 1024, got {self.max_body_bytes}")
        if self.shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout: expected >= 0, got {self.shutdown_timeout}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads: expected >= 1, got {self.cpu_threads}")
        for name in ("header_timeout", "body_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected > 0, got {getattr(self, name)}")
        if self.api_key is None and self.api_key_file is not None:
            self.api_key = _read_key(self.api_key_file)
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key: empty")

    def engine_kwargs(self) -> dict[str, Any]:
        kwargs = {name: getattr(self, name) for name in ENGINE_OPTIONS}
        kwargs["model"] = self.model
        kwargs["limits"] = self.limits
        return kwargs

    def public(self) -> dict[str, Any]:
        """The settings as /server_info reports them (never the API key)."""
        d = asdict(self)
        d["api_key"] = "set" if self.api_key else None
        return d


def _read_key(path: str) -> str:
    try:
        key = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"api_key_file: cannot read {path!r}: {exc.strerror}") from None
    if not key:
        raise ValueError(f"api_key_file: {path!r} is empty")
    return key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "--model-path", dest="model", help="checkpoint directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument(
        "--api-key",
        help="require `Authorization: Bearer KEY` on all but the health checks (also from "
        f"${API_KEY_ENV}, or --api-key-file, which keep it out of the process list)",
    )
    parser.add_argument("--api-key-file", help="a file holding the API key")
    parser.add_argument("--served-model-name", help="the model's name in /v1 responses")
    parser.add_argument("--chat-template", help="a Jinja chat template or a file holding one")
    parser.add_argument("--max-body-bytes", type=int, default=16 << 20, help="larger bodies: 413")
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a client may take to send a request's headers; then the connection closes",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=60.0,
        help="seconds a client may take to send a request's body; then 408",
    )
    parser.add_argument(
        "--incremental-streaming-output",
        action="store_true",
        help="/generate streams deltas instead of the cumulative text (SGLang's flag)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        help="seconds in-flight requests get to finish on SIGINT/SIGTERM before they are aborted",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--cpu-threads",
        type=int,
        help="the model's threads on CPU (default: all cores but one, left to the HTTP server)",
    )
    defaults = ServerArgs()
    types = {f.name: f.type for f in fields(ServerArgs)}
    for name, help_text in ENGINE_OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=help_text)
            continue
        kind = str(types[name])
        conv = int if "int" in kind else float if "float" in kind else str
        parser.add_argument(flag, type=conv, default=default, help=help_text)

    for f in fields(RequestLimits):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=int,
            default=f.default,
            help=RequestLimits.help()[f.name],
        )


def from_namespace(ns: argparse.Namespace) -> ServerArgs:
    given = vars(ns)
    names = {f.name for f in fields(ServerArgs)}
    limits = RequestLimits(**{f.name: given[f.name] for f in fields(RequestLimits)})
    args = ServerArgs(**{k: v for k, v in given.items() if k in names}, limits=limits)
    if args.api_key is None and os.environ.get(API_KEY_ENV):
        args = replace(args, api_key=os.environ[API_KEY_ENV])
    return args
