"""Tiny random-weight checkpoints of each supported architecture, made with transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from loomlm.runtime.executor.models.loader import DEFAULT_MODEL_DIR

COMMON: dict[str, Any] = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
)

# name -> (config class name, extra config)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {"tie_word_embeddings": False}),
    "llama3-rope": (
        "LlamaConfig",
        {
            "tie_word_embeddings": True,
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        },
    ),
    "mistral": ("MistralConfig", {"tie_word_embeddings": False, "sliding_window": None}),
    "mistral-window": ("MistralConfig", {"tie_word_embeddings": False, "sliding_window": 8}),
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", {"tie_word_embeddings": False, "head_dim": 32}),
}


def make_checkpoint(
    root: Path, name: str, dtype: torch.dtype = torch.float32, shard: bool = False
) -> Path:
    import transformers

    cls_name, extra = VARIANTS[name]
    config = getattr(transformers, cls_name)(**{**COMMON, **extra})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # init_weights gives tiny values; widen them so greedy has no ties
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.08)
    model = model.to(dtype)
    path = root / f"{name}-{str(dtype).split('.')[-1]}{'-sharded' if shard else ''}"
    model.save_pretrained(path, max_shard_size="100KB" if shard else "5GB")
    return path


def hf_model(path: Path, dtype: torch.dtype = torch.float32) -> Any:
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def default_model_dir() -> Path:
    return DEFAULT_MODEL_DIR
