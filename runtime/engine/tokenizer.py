"""Loading the checkpoint's tokenizer (transformers' fast tokenizer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def load_tokenizer(path: str | Path) -> Any | None:
    """The tokenizer stored with a checkpoint, or None when it ships none (ids-only use)."""
    path = Path(path)
    if path.is_dir() and not any((path / f).exists() for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:
        raise ValueError(
            f"tokenizer: could not load a tokenizer from {str(path)!r}: {exc}"
        ) from exc
