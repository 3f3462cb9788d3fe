"""The engine's weight-update calls (SGLang's names): from tensors, from a checkpoint on disk,
and from a trainer's broadcast over a torch.distributed group; each one versioned, and by
default followed by a flush of the prefix cache, whose entries were computed with the old
weights (serving them after a refit is the stale-KV bug NeMo-RL and lmdeploy shipped).

The receiving and checking run in the caller's thread, so the engine keeps generating
meanwhile; the writes run on the engine thread between two steps (`run_between_steps`), so no
step computes with half of an update. Requests in flight carry on with the new weights; with
`flush_cache` their KV, computed partly with the old ones, is never shared with later requests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import safe_open

from ..executor.models.loader import checkpoint_files, iter_checkpoint
from .sync_group import SyncGroup
from .updater import NamedTensors, Plan, WeightUpdater

T = TypeVar("T")
RunBetweenSteps = Callable[[Callable[[], T]], T]

_DTYPE_NAMES = {
    "float32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
}


class WeightService:
    def __init__(
        self,
        updater: WeightUpdater,
        run_between_steps: Callable[[Callable[[], Any]], Any],
        invalidate_cache: Callable[[], None],
        on_version: Callable[[str], None],
    ) -> None:
        self.updater = updater
        self._between_steps = run_between_steps
        self._invalidate_cache = invalidate_cache
        self._on_version = on_version
        self._groups: dict[str, SyncGroup] = {}

    @property
    def version(self) -> str:
        return self.updater.version

    # -- from tensors ------------------------------------------------------------------------
    def update_from_tensor(
        self,
        named_tensors: NamedTensors,
        flush_cache: bool = True,
        weight_version: str | None = None,
    ) -> str:
        _check_version(weight_version)
        with self.updater.exclusive("update_weights_from_tensor"):
            plan = self.updater.plan(named_tensors)
            return self._commit(lambda: self.updater.apply(plan), flush_cache, weight_version)

    # -- from disk ---------------------------------------------------------------------------
    def update_from_disk(
        self, model_path: str | Path, flush_cache: bool = True, weight_version: str | None = None
    ) -> str:
        """Every weight from the checkpoint at `model_path`, which must have this model's
        names and shapes (checked from its headers before anything is read)."""
        _check_version(weight_version)
        model_dir = Path(model_path).expanduser()
        if not model_dir.is_dir():  # a local directory only: an update never downloads
            raise ValueError(f"model_path: {str(model_path)!r} is not a checkpoint directory")
        with self.updater.exclusive("update_weights_from_disk"):
            shapes = _checkpoint_shapes(model_dir)
            pieces = self.updater.pieces
            for name, piece in pieces.items():
                if name not in shapes:
                    raise ValueError(f"model_path: the checkpoint lacks {name!r}")
                if shapes[name] != piece.shape:
                    raise ValueError(
                        f"model_path: {name!r} has shape {list(shapes[name])} in the checkpoint, "
                        f"{list(piece.shape)} in the model"
                    )

            def write_all() -> None:  # streamed: one checkpoint tensor in memory at a time
                for name, tensor in iter_checkpoint(model_dir):
                    if name in pieces:
                        self.updater.apply([(pieces[name], tensor)])

            return self._commit(write_all, flush_cache, weight_version)

    # -- from a trainer's broadcast ----------------------------------------------------------
    def init_group(
        self,
        master_address: str,
        master_port: int,
        rank_offset: int,
        world_size: int,
        group_name: str = "weight_update_group",
        backend: str = "gloo",
    ) -> None:
        """Join the trainer's group as rank `rank_offset`; returns once every member joined."""
        if group_name in self._groups:
            raise ValueError(f"group_name: a group named {group_name!r} exists already")
        self._groups[group_name] = SyncGroup(
            master_address, master_port, rank_offset, world_size, group_name, backend
        )

    def destroy_group(self, group_name: str = "weight_update_group") -> None:
        group = self._groups.pop(group_name, None)
        if group is None:
            raise ValueError(f"group_name: no group named {group_name!r}")
        group.close()

    def update_from_distributed(
        self,
        names: Sequence[str],
        dtypes: Sequence[str | torch.dtype],
        shapes: Sequence[Sequence[int]],
        group_name: str = "weight_update_group",
        flush_cache: bool = True,
        weight_version: str | None = None,
    ) -> str:
        """Receive one broadcast from rank 0 per name, in order, then write them all. Names,
        dtypes and shapes are checked before anything is received; the tensors are held until
        the last has arrived, so a trainer that fails half-way leaves the old weights whole
        (a trainer bounds that memory by how many names it sends per call)."""
        _check_version(weight_version)
        group = self._groups.get(group_name)
        if group is None:
            raise ValueError(
                f"group_name: no group named {group_name!r}; call init_weights_update_group first"
            )
        if not len(names) == len(dtypes) == len(shapes):
            raise ValueError(
                f"names, dtypes, shapes: expected one of each per tensor, got {len(names)}, "
                f"{len(dtypes)} and {len(shapes)}"
            )
        with self.updater.exclusive("update_weights_from_distributed"):
            empties = [
                torch.empty([int(n) for n in shape], dtype=_dtype_of(dtype, i))
                for i, (dtype, shape) in enumerate(zip(dtypes, shapes))
            ]
            plan: Plan = self.updater.plan(list(zip(names, empties)), field="names")
            for tensor in empties:
                group.broadcast(tensor, src=0)
            return self._commit(lambda: self.updater.apply(plan), flush_cache, weight_version)

    def close(self) -> None:
        for name in list(self._groups):
            self.destroy_group(name)

    # -- the commit on the engine thread -----------------------------------------------------
    def _commit(self, write: Callable[[], None], flush_cache: bool, version: str | None) -> str:
        def between_steps() -> str:
            write()
            new = self.updater.advance(version)
            self._on_version(new)
            if flush_cache:
                self._invalidate_cache()
            return new

        result: str = self._between_steps(between_steps)
        return result


def _check_version(version: str | None) -> None:
    if version is not None and not isinstance(version, str):
        raise ValueError(f"weight_version: expected a string, got {type(version).__name__}")


def _dtype_of(dtype: str | torch.dtype, i: int) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        found: torch.dtype | None = dtype
    else:
        found = _DTYPE_NAMES.get(str(dtype).removeprefix("torch."))
    if found is None or not found.is_floating_point:
        raise ValueError(
            f"dtypes[{i}]: {dtype!r} is not a floating-point dtype; expected one of "
            f"{', '.join(_DTYPE_NAMES)}"
        )
    return found


def _checkpoint_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, from the files' headers (nothing is read)."""
    shapes = {}
    for file in checkpoint_files(model_dir, field="model_path"):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes
