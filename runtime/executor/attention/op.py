"""Attention as one opaque op, `torch.ops.loomlm.attention`: how the model's layers call the
attention backend, compiled or not.

A compiled graph of the forward step sees this op as a single call with the shape of its
query. Inside it, the backend reads the step's metadata from the forward context and writes
the new keys and values into the paged pool, which the graph never sees. That keeps the graph
free of per-step shapes (context lengths vary every step; the graph's only dynamic size is
the number of tokens) and of writes into the pool that the compiler would have to reason about.
"""

from __future__ import annotations

import torch

from .. import forward_context

_lib = torch.library.Library("loomlm", "FRAGMENT")
_lib.define("attention(Tensor q, Tensor k, Tensor v, int layer_id) -> Tensor")


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int) -> torch.Tensor:
    batch = forward_context.current()
    return batch.attention.forward(layer_id, q, k, v, batch)


def _attention_shape(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int
) -> torch.Tensor:
    return torch.empty_like(q)


_lib.impl("attention", _attention, "CompositeExplicitAutograd")
_lib.impl("attention", _attention_shape, "Meta")

attention = torch.ops.loomlm.attention.default
