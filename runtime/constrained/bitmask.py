"""Packed token bitmasks: one int32 word per 32 tokens, bit t % 32 of word t // 32 set when
token t is allowed (the layout llguidance, xgrammar and outlines-core all write).

A batch of masks is applied in one pass over the batch, with no Python loop over rows or
tokens. On CPU a small kernel compiled by torch inductor unpacks the bits and fills the
logits in place (~80 us per 128k-token row on the 2-core benchmark machine). Without a C++
compiler (or with LOOMLM_DISABLE_COMPILE=1), and on GPU, the eager path reads the words as
bytes, turns each byte into its 8 additive biases (0.0 allowed, -inf not) through a
256-entry table and adds them: branch-free, where an eager boolean `masked_fill` costs ~10x
more on an irregular mask (branch mispredictions).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import numpy as np
import torch

logger = logging.getLogger("loomlm.constrained")

_LUT_NP = np.where(
    np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little") == 1,
    np.float32(0.0),
    np.float32(-np.inf),
).astype(np.float32)  # [256, 8]: bias of bit b of byte value v
_LUTS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def words_for(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def allocate_bitmask(batch: int, vocab_size: int) -> torch.Tensor:
    """[batch, words] int32, all tokens disallowed."""
    return torch.zeros((batch, words_for(vocab_size)), dtype=torch.int32)


def row_pointer(bitmask: torch.Tensor, row: int) -> tuple[int, int]:
    """(address, bytes) of one row of a contiguous int32 CPU bitmask, for the libraries
    that write masks through a pointer (without the microseconds a tensor view costs)."""
    row_bytes = bitmask.shape[1] * 4
    return bitmask.data_ptr() + row * row_bytes, row_bytes


def bitmask_bias(bitmask: torch.Tensor, vocab_size: int, device: torch.device) -> torch.Tensor:
    """[R, words] int32 -> [R, vocab_size] float32 additive bias (0 allowed, -inf not)."""
    assert bitmask.dtype == torch.int32 and bitmask.dim() == 2, (bitmask.dtype, bitmask.shape)
    rows = bitmask.shape[0]
    if device.type == "cpu":
        # Little-endian bytes of word w hold tokens 32w..32w+7, 32w+8..., in order.
        as_bytes = bitmask.contiguous().numpy().view(np.uint8)  # [R, words * 4]
        bias = np.take(_LUT_NP, as_bytes, axis=0).reshape(rows, -1)  # [R, words * 32]
        return torch.from_numpy(bias)[:, :vocab_size]
    key = (device, torch.float32)
    lut = _LUTS.get(key)
    if lut is None:
        lut = _LUTS[key] = torch.from_numpy(_LUT_NP).to(device)
    byte_ids = bitmask.to(device, non_blocking=True).view(torch.uint8).long()
    return lut[byte_ids].view(rows, -1)[:, :vocab_size]


def _fill_disallowed(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    # logits: [R, V] float; bitmask: [R, words] int32 -> logits of unset bits become -inf
    vocab = logits.shape[1]
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = ((bitmask.unsqueeze(-1) >> shifts) & 1).flatten(1)[:, :vocab]  # [R, words*32] -> [R, V]
    logits.masked_fill_(bits == 0, float("-inf"))


_compiled: Callable[[torch.Tensor, torch.Tensor], None] | None = None
_compile_failed = os.environ.get("LOOMLM_DISABLE_COMPILE", "") not in ("", "0")
_lock = threading.Lock()


def _apply_compiled(logits: torch.Tensor, bitmask: torch.Tensor) -> bool:
    """The compiled kernel on CPU; False when it is unavailable (the caller goes eager)."""
    global _compiled, _compile_failed
    if _compile_failed or logits.device.type != "cpu" or not logits.is_contiguous():
        return False
    try:
        if _compiled is None:
            with _lock:
                if _compiled is None:
                    _compiled = torch.compile(_fill_disallowed, dynamic=True)
        _compiled(logits, bitmask)
        return True
    except Exception as exc:  # no C++ compiler, unsupported platform...
        _compile_failed = True
        logger.warning("compiled mask kernel unavailable, using the eager path: %s", exc)
        return False


def warm_up() -> None:
    """Compile the CPU kernel for its size specialisations now (batch 1 and many), so that
    no request pays the seconds of compilation. Under inference_mode, as the runner calls
    it: a compile is specific to the grad mode, and one made in the other mode would be
    made again during a step. Vocabularies that fill their last word exactly (V = 32 *
    words) and those that do not compile apart too."""
    with torch.inference_mode():
        for batch in (1, 2):
            for vocab in (40, 64):
                logits = torch.zeros(batch, vocab)
                _apply_compiled(logits, torch.zeros(batch, 2, dtype=torch.int32))


def apply_token_bitmask_(
    logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor | None = None
) -> None:
    """Set disallowed tokens' logits to -inf, in place.

    logits: [B, V] float32; bitmask: [R, words] int32 with words >= ceil(V / 32) (bits past
    V are ignored); rows: [R] int64 indices of the logits rows the masks belong to (None:
    R == B, mask i for row i).
    """
    assert logits.dim() == 2 and bitmask.shape[1] * 32 >= logits.shape[1], (
        logits.shape,
        bitmask.shape,
    )
    if rows is None:
        assert bitmask.shape[0] == logits.shape[0], (logits.shape, bitmask.shape)
        if not _apply_compiled(logits, bitmask):
            bias = bitmask_bias(bitmask, logits.shape[1], logits.device)
            logits.add_(bias.to(logits.dtype))
        return
    rows = rows.to(logits.device)
    sub = logits.index_select(0, rows)
    apply_token_bitmask_(sub, bitmask)
    logits.index_copy_(0, rows, sub)


def apply_token_bitmask_reference(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """Bit-by-bit reference for tests: a new tensor with disallowed logits at -inf."""
    out = logits.clone()
    words = bitmask.tolist()
    for r in range(out.shape[0]):
        for t in range(out.shape[1]):
            if not (words[r][t // 32] >> (t % 32)) & 1:
                out[r, t] = float("-inf")
    return out
