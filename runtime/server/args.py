"""`loomlm serve` options: the server's own fields, and the engine's (`EngineConfig`).

Every flag is generated from these fields (utils/options.py), keeping SGLang's flag names.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..engine.config import EngineConfig
from ..engine.request_limits import RequestLimits
from ..utils.options import add_flags, group, leaves, option, read_flags

# The API key may come from the environment instead of the command line, where every user
# of the machine can read it in the process list.
API_KEY_ENV = "LOOMLM_API_KEY"


@dataclass(slots=True)
class ServerArgs:
    host: str = option("127.0.0.1", "address to bind (default: loopback only)")
    port: int = option(30000, "port to listen on")
    api_key: str | None = option(
        None,
        "require `Authorization: Bearer KEY` on all but the health checks (also from "
        f"${API_KEY_ENV}, or --api-key-file, which keep it out of the process list)",
    )
    api_key_file: str | None = option(None, "a file holding the API key (read once, at start)")
    served_model_name: str | None = option(
        None,
        "the model's name(s) in the OpenAI API, comma-separated: requests may name any of them "
        "(others get 404), the first is the one /v1/models lists first (default: the model path)",
    )
    chat_template: str | None = option(None, "a Jinja chat template, or a file holding one")
    max_body_bytes: int = option(16 << 20, "largest request body; larger ones get 413")
    # A client that trickles its headers or body holds a connection and its buffers
    # (slowloris).
    header_timeout: float = option(
        10.0, "seconds a client may take to send a request's headers; then the connection closes"
    )
    body_timeout: float = option(
        60.0, "seconds a client may take to send a request's body; then 408"
    )
    tool_call_parser: str = option(
        "auto",
        "the format tool calls take in the model's text, for tool_choice 'auto' (auto: read "
        "off the chat template)",
        choices=("auto", "hermes", "llama3_json", "qwen25", "llama3"),
    )
    reasoning_parser: str | None = option(
        None,
        "split a reasoning model's <think>...</think> into the reply's reasoning_content "
        "(SGLang's flag; unless a request sets separate_reasoning false)",
        choices=("deepseek-r1", "qwen3"),
    )
    strict_fields: bool = option(
        False,
        "refuse OpenAI request fields nobody defines (400) instead of ignoring them with a "
        "logged warning",
    )
    allow_auto_truncate: bool = option(
        False,
        "cut the new tokens a request asks for to the room its prompt leaves in the context, "
        "instead of answering 400 (SGLang's flag)",
    )
    incremental_streaming_output: bool = option(
        False, "/generate streams deltas instead of the cumulative text (SGLang's flag)"
    )
    shutdown_timeout: float = option(
        10.0,
        "seconds in-flight requests get to finish on SIGINT/SIGTERM before they are aborted",
    )
    cpu_threads: int | None = option(
        None, "the model's threads on CPU (default: all cores but one, left to the HTTP server)"
    )
    log_level: str = option("info", "logging level", choices=("debug", "info", "warning", "error"))
    # Weight updates (RLHF refit) replace the model and make the server connect to a trainer
    # or read checkpoints: nothing a client sends does either unless the operator said so.
    enable_weight_updates: bool = option(
        False,
        "accept /update_weights_from_tensor, /update_weights_from_distributed (trainers at "
        "--weight-sync-hosts) and /update_weights_from_disk (under --weights-dir)",
    )
    weight_sync_hosts: str = option(
        "127.0.0.1,localhost,::1",
        "comma-separated trainer addresses /init_weights_update_group may connect to",
    )
    weights_dir: str | None = option(
        None, "the directory under which /update_weights_from_disk may read checkpoints"
    )
    max_weight_update_bytes: int = option(
        4 << 30, "largest body of /update_weights_from_tensor; larger ones get 413"
    )
    engine: EngineConfig = group(EngineConfig)

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

    @property
    def limits(self) -> RequestLimits:
        return self.engine.limits

    def public(self, engine_config: EngineConfig | None = None) -> dict[str, Any]:
        """The settings as /server_info reports them, flat as SGLang's are: the server's and
        every engine option (of `engine_config`, the one in force, when given); never the
        API key."""
        info: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "engine"
        }
        info["api_key"] = "set" if self.api_key else None
        config = engine_config or self.engine
        for leaf in leaves(EngineConfig):
            value: Any = config
            for name in leaf.path:
                value = getattr(value, name)
            info[leaf.name] = _jsonable(value)
        return info


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _read_key(path: str) -> str:
    try:
        key = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"api_key_file: cannot read {path!r}: {exc.strerror}") from None
    if not key:
        raise ValueError(f"api_key_file: {path!r} is empty")
    return key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, ServerArgs)


def from_namespace(ns: argparse.Namespace) -> ServerArgs:
    args: ServerArgs = read_flags(ns, ServerArgs)
    if args.api_key is None and os.environ.get(API_KEY_ENV):
        args = replace(args, api_key=os.environ[API_KEY_ENV])
    return args
