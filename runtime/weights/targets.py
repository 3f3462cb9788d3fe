"""Where each Hugging Face weight of a checkpoint lives in the engine's model, and how to write
it there in place.

A trainer holds a Hugging Face model and names its tensors as `model.named_parameters()` does
(`model.layers.3.self_attn.k_proj.weight`). The engine fuses q/k/v and gate/up into one
matrix each (the loader maps the names, models/loader.py) and, on CPU, keeps large linear
layers only in a packed layout (packed_linear.py). A `Piece` is one Hugging Face tensor's
place: a row range of one of the engine's tensors, written in place:

- a plain parameter: a copy into its rows;
- a weight packed for our column-blocked kernel: the rows scattered into their blocks;
- a weight packed by oneDNN (opaque): read back exactly through a product with the identity,
  the rows replaced, packed again and copied over the old packing.

No piece allocates a second copy of the model: the extra memory of a write is one converted
tensor (and, for oneDNN, one layer's plain weight).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..executor.models.config import ModelConfig
from ..executor.models.loader import target_of
from ..executor.packed_linear import PackedLinear, repack_onednn, unpack_onednn

# Tensors a Hugging Face model may list that are not weights (recomputed, never loaded).
NOT_WEIGHTS = ("rotary_emb.inv_freq",)

Write = Callable[[int, torch.Tensor], None]  # (first row, rows already in the engine's dtype)


@dataclass(frozen=True)
class Piece:
    target: str  # the engine tensor's name (a packed layer's as `<module>.weight`)
    start: int  # its first row
    shape: tuple[int, ...]  # the Hugging Face tensor's shape
    write: Write


def pieces_of(model: nn.Module, config: ModelConfig) -> dict[str, Piece]:
    """Every Hugging Face tensor name this model takes, with where it goes."""
    tensors: dict[str, tuple[tuple[int, ...], Write]] = {}
    for name, param in model.named_parameters():
        tensors[name] = (tuple(param.shape), _plain_writer(param))
    for name, module in model.named_modules():
        if isinstance(module, PackedLinear):
            shape: tuple[int, ...] = (module.out_features, module.in_features)
            tensors[f"{name}.weight"] = (shape, _packed_writer(module))
    starts: dict[str, list[tuple[str, int]]] = {}
    for hf_name in _hf_names(config):
        target = target_of(hf_name, config)
        if target is None or target[0] not in tensors:
            continue  # e.g. lm_head.weight of a model whose embeddings are tied
        starts.setdefault(target[0], []).append((hf_name, target[1]))
    tied = getattr(model, "tied_head", None)
    if isinstance(tied, PackedLinear) and "embed_tokens.weight" in tensors:
        # batch-invariant mode keeps a packed copy of a tied embedding as the head
        shape, embed = tensors["embed_tokens.weight"]
        tensors["embed_tokens.weight"] = (shape, _both(embed, _packed_writer(tied)))
    pieces = {}
    for ours, named in starts.items():
        shape, write = tensors[ours]
        named.sort(key=lambda item: item[1])
        ends = [start for _, start in named[1:]] + [shape[0]]
        for (hf_name, start), end in zip(named, ends):
            pieces[hf_name] = Piece(ours, start, (end - start, *shape[1:]), write)
    return pieces


def _hf_names(config: ModelConfig) -> list[str]:
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    projections = ["q_proj", "k_proj", "v_proj", "o_proj"]
    for i in range(config.num_layers):
        layer = f"model.layers.{i}."
        names += [f"{layer}self_attn.{p}.weight" for p in projections]
        if config.attention_bias:
            names += [f"{layer}self_attn.{p}.bias" for p in ("q_proj", "k_proj", "v_proj")]
        if config.qk_norm:
            names += [f"{layer}self_attn.q_norm.weight", f"{layer}self_attn.k_norm.weight"]
        names += [f"{layer}mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")]
        names += [f"{layer}input_layernorm.weight", f"{layer}post_attention_layernorm.weight"]
    return names


def _both(first: Write, second: Write) -> Write:
    def write(start: int, rows: torch.Tensor) -> None:
        first(start, rows)
        second(start, rows)

    return write


def _plain_writer(param: torch.Tensor) -> Write:
    def write(start: int, rows: torch.Tensor) -> None:
        param.data[start : start + rows.shape[0]].copy_(rows)

    return write


def _packed_writer(module: PackedLinear) -> Write:
    if module.blocked:
        return _blocked_writer(module)

    def write(start: int, rows: torch.Tensor) -> None:
        plain = unpack_onednn(module)
        plain[start : start + rows.shape[0]] = rows
        repack_onednn(module, plain)

    return write


def _blocked_writer(module: PackedLinear) -> Write:
    """Rows written straight into the column-blocked layout [N/BN][K/P][BN][P] (P = 2 for
    bfloat16, 1 for float32; K zero padded to a multiple of P)."""
    packed = module.packed
    block_n, pair = packed.shape[2], packed.shape[3]
    pairs = packed.shape[1]

    def write(start: int, rows: torch.Tensor) -> None:
        n, k = rows.shape
        index = torch.arange(start, start + n)
        if pairs * pair != k:  # the zero padding of an odd K stays zero
            rows = torch.nn.functional.pad(rows, (0, pairs * pair - k))
        packed[index // block_n, :, index % block_n, :] = rows.reshape(n, pairs, pair)

    return write
