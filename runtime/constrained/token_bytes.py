"""The bytes each token id stands for, from a Hugging Face tokenizer.

Byte-level BPE vocabularies (Llama 3, Qwen, GPT-2) spell bytes with printable stand-ins;
SentencePiece vocabularies (Llama 2, TinyStories) write spaces as U+2581 and keep
byte-fallback tokens `<0xNN>`. Special tokens have no bytes (they are never text).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    # GPT-2's reversible byte <-> printable-character map.
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def vocabulary_bytes(tokenizer: Any, vocab_size: int) -> list[bytes | None]:
    """bytes of every id below vocab_size; None for special, added-control and unused ids."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
    special = set(getattr(tokenizer, "all_special_ids", []))
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special |= {i for i, t in added.items() if getattr(t, "special", False)}
    byte_level = _is_byte_level(tokenizer)
    decoder = _byte_decoder()
    out: list[bytes | None] = [None] * vocab_size
    for i, piece in enumerate(pieces):
        if piece is None or i in special:
            continue
        if byte_level:
            try:
                out[i] = bytes(decoder[c] for c in piece)
            except KeyError:  # an added token written in plain text
                out[i] = piece.encode("utf-8")
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            out[i] = bytes([int(piece[3:5], 16)])
        else:
            out[i] = piece.replace("\u2581", " ").encode("utf-8")
    return out


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return "ByteLevel" in str(backend.decoder.__class__) or "ByteLevel" in repr(backend.decoder)
    return False
