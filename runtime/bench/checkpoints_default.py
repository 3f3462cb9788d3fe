"""Where the built-in model's tokenizer lives (the benchmark model borrows it)."""

from __future__ import annotations

from pathlib import Path


def default_tokenizer_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "assets" / "tinystories-260k"
