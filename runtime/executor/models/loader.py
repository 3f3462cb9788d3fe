"""Find a checkpoint (the shipped default, a local directory, or a hub id) and load its weights."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from .config import ModelConfig
from .llama import LlamaForCausalLM

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "assets" / "tinystories-260k"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")

DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
}


def resolve_model_dir(model: str | Path | None) -> Path:
    """The checkpoint directory for `model`: None means the built-in TinyStories 260K."""
    if model is None:
        return DEFAULT_MODEL_DIR
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"model: directory {str(model)!r} has no config.json")
        return path
    if _HUB_ID.match(str(model)) and not path.exists():
        return _download_from_hub(str(model))
    raise ValueError(f"model: {str(model)!r} is not a directory (expected a checkpoint directory)")


def _download_from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                repo_id,
                allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"],
            )
        )
    except Exception as exc:  # network down, no such repo, gated...
        raise ValueError(
            f"model: {repo_id!r} is not a local directory and could not be fetched from the "
            f"Hugging Face hub ({type(exc).__name__}: {exc})"
        ) from exc


def resolve_dtype(dtype: str | torch.dtype, config: ModelConfig) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return DTYPES.get(config.torch_dtype, torch.float32)
    if dtype not in DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not supported; expected auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    model_dir: Path, config: ModelConfig, dtype: torch.dtype, device: torch.device
) -> LlamaForCausalLM:
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(dtype)
    # Materialise uninitialised storage: every parameter is overwritten from the checkpoint.
    model = model.to_empty(device=device)
    model.rotary.to(device, dtype)
    params = dict(model.named_parameters())
    filled: set[str] = set()
    for name, tensor in iter_checkpoint(model_dir):
        target = target_of(name, config)
        if target is None:
            continue
        param_name, start = target
        if param_name not in params:
            continue  # e.g. lm_head.weight in a checkpoint that also ties embeddings
        param = params[param_name]
        with torch.no_grad():
            param.data[start : start + tensor.shape[0]].copy_(tensor.to(dtype))
        filled.add(f"{param_name}@{start}")
    expected = _expected_pieces(config, params)
    missing = sorted(expected - filled)
    if missing:
        raise ValueError(
            f"model: checkpoint in {str(model_dir)!r} lacks weights for {', '.join(missing[:5])}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    return model.eval()


def checkpoint_files(model_dir: Path, field: str = "model") -> list[Path]:
    """The checkpoint's safetensors files (those its index names, when it has one)."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{field}: no *.safetensors files in {str(model_dir)!r}")
    return [model_dir / file for file in files]


def iter_checkpoint(model_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    for file in checkpoint_files(model_dir):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def target_of(name: str, config: ModelConfig) -> tuple[str, int] | None:
    """Map a checkpoint tensor name to (our parameter, first row it fills)."""
    if name == "model.embed_tokens.weight":
        return "embed_tokens.weight", 0
    if name == "model.norm.weight":
        return "norm.weight", 0
    if name == "lm_head.weight":
        return "lm_head.weight", 0
    m = _LAYER.match(name)
    if m is None:
        return None
    layer, rest = m.group(1), m.group(2)
    prefix = f"layers.{layer}."
    q_size = config.num_heads * config.head_dim
    kv_size = config.num_kv_heads * config.head_dim
    fused = {
        "self_attn.q_proj": ("self_attn.qkv_proj", 0),
        "self_attn.k_proj": ("self_attn.qkv_proj", q_size),
        "self_attn.v_proj": ("self_attn.qkv_proj", q_size + kv_size),
        "mlp.gate_proj": ("mlp.gate_up_proj", 0),
        "mlp.up_proj": ("mlp.gate_up_proj", config.intermediate_size),
    }
    module, _, kind = rest.rpartition(".")
    if module in fused:
        ours, start = fused[module]
        return f"{prefix}{ours}.{kind}", start
    return prefix + rest, 0


def _expected_pieces(config: ModelConfig, params: dict[str, torch.nn.Parameter]) -> set[str]:
    pieces = set()
    q_size = config.num_heads * config.head_dim
    kv_size = config.num_kv_heads * config.head_dim
    for name in params:
        if name.endswith("qkv_proj.weight") or name.endswith("qkv_proj.bias"):
            pieces |= {f"{name}@0", f"{name}@{q_size}", f"{name}@{q_size + kv_size}"}
        elif name.endswith("gate_up_proj.weight"):
            pieces |= {f"{name}@0", f"{name}@{config.intermediate_size}"}
        else:
            pieces.add(f"{name}@0")
    return pieces
