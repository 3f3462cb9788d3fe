"""Weight updates of a running engine: check a whole update, then write it in place.

An update is checked entirely before anything is written (every name known, every shape and
dtype right, no name twice), so a bad one leaves the old weights whole; the writes then run on
the engine thread between two steps, so no step sees half of an update. Updates are one at a
time: a second one while another is under way is refused, not queued behind it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from ..executor.models.config import ModelConfig
from ..executor.quantize import Int8Linear
from .targets import NOT_WEIGHTS, Piece, pieces_of

NamedTensors = Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor]
Plan = list[tuple[Piece, torch.Tensor]]

INITIAL_VERSION = "default"  # SGLang's name for the weights an engine started with


class WeightUpdater:
    def __init__(self, model: nn.Module, config: ModelConfig, dtype: torch.dtype) -> None:
        self.pieces = pieces_of(model, config)
        self.dtype = dtype
        self.device = next(model.parameters()).device
        self.version = INITIAL_VERSION
        self.updates = 0  # updates applied since start
        self._busy = threading.Lock()
        self._busy_with = ""
        # Quantized at load: the int8 layers hold no weight a trainer's tensors could replace.
        self.quantized = any(isinstance(m, Int8Linear) for m in model.modules())

    @contextmanager
    def exclusive(self, call: str) -> Iterator[None]:
        """Hold the one update slot for `call`; ValueError if another update holds it."""
        if not self._busy.acquire(blocking=False):
            raise ValueError(
                f"{call}: another weight update ({self._busy_with}) is under way; "
                "send updates one after another"
            )
        self._busy_with = call
        try:
            yield
        finally:
            self._busy_with = ""
            self._busy.release()

    def plan(self, named_tensors: NamedTensors, field: str = "named_tensors") -> Plan:
        """Check an update; returns (piece, tensor) pairs to write. ValueError names the first
        bad entry and what was expected."""
        if self.quantized:
            raise ValueError(
                f"{field}: this engine quantized its weights at load (quantization=int8); "
                "weight updates need an engine started without quantization"
            )
        items = (
            list(named_tensors.items())
            if isinstance(named_tensors, Mapping)
            else list(named_tensors)
        )
        plan: Plan = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise ValueError(f"{field}[{i}]: expected a (name, tensor) pair")
            name, tensor = item
            where = f"{field}[{i}] ({name!r})"
            if not isinstance(name, str):
                raise ValueError(
                    f"{field}[{i}]: the name must be a string, got {type(name).__name__}"
                )
            if name.endswith(NOT_WEIGHTS):
                continue
            piece = self.pieces.get(name)
            if piece is None:
                raise ValueError(f"{where}: not a weight of this model; {self._name_hint(name)}")
            if name in seen:
                raise ValueError(f"{where}: given twice in one update")
            seen.add(name)
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"{where}: expected a torch.Tensor, got {type(tensor).__name__}")
            if not tensor.is_floating_point():
                raise ValueError(f"{where}: expected a floating-point tensor, got {tensor.dtype}")
            if tuple(tensor.shape) != piece.shape:
                raise ValueError(
                    f"{where}: shape {list(tensor.shape)} does not match the model's "
                    f"{list(piece.shape)}"
                )
            plan.append((piece, tensor))
        return plan

    def apply(self, plan: Plan) -> None:
        """Write a checked update in place (the engine thread, between steps)."""
        with torch.no_grad():
            for piece, tensor in plan:
                piece.write(piece.start, tensor.detach().to(self.device, self.dtype))

    def advance(self, version: str | None) -> str:
        """The version after an update: `version` when given, else the number of updates."""
        self.updates += 1
        self.version = version if version is not None else str(self.updates)
        return self.version

    def _name_hint(self, name: str) -> str:
        """The expected naming, with an example of the same kind of tensor."""
        suffix = name.rsplit(".", 2)[-2:]
        like = [n for n in self.pieces if n.endswith(".".join(suffix))]
        example = like[0] if like else next(iter(self.pieces))
        return f"expected Hugging Face parameter names such as {example!r}"
