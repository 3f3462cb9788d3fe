"""The benchmark model: a random-weight Llama made with transformers and cached on disk.

Speed does not depend on the values of the weights, so a random model of a realistic shape
stands in where no real checkpoint of that shape is at hand.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

BENCH_SHAPE = dict(
    hidden_size=768,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=12,
    vocab_size=32000,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)


def bench_model_dir(cache: str | Path | None = None, with_tokenizer: bool = False) -> Path:
    """Create (once) and return the hidden-768, 12-layer float32 Llama checkpoint.

    `with_tokenizer`: the same shape with the built-in model's 512-token vocabulary and its
    tokenizer, for benchmarks that send text (language programs).
    """
    root = Path(cache or os.environ.get("LOOMLM_BENCH_CACHE") or Path.home() / ".cache" / "loomlm")
    shape: dict[str, Any] = dict(BENCH_SHAPE, vocab_size=512) if with_tokenizer else BENCH_SHAPE
    path = root / f"llama-h768-l12-v{shape['vocab_size']}-f32"
    if (path / "config.json").exists():
        return path
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape)).float()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    if with_tokenizer:
        from ..runtime.executor.models.loader import resolve_model_dir

        source = resolve_model_dir(None)
        for name in (
            "tokenizer.json",
            "tokenizer.model",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ):
            shutil.copy(source / name, path / name)
    return path
