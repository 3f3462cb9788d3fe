"""The engine's calls for RL trainers (SGLang's names): weight updates (refit), memory
release / resume, and pause / continue generation. A mixin of `Engine`, which builds the
objects they go through: the weight service (weights/service.py), the memory occupation
(memory_occupation.py) and the engine loop, whose `call` runs a function between two steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..scheduler.output_processor import OutputProcessor
from ..scheduler.scheduler import Scheduler
from ..weights.service import WeightService
from ..weights.updater import NamedTensors
from .loop import EngineLoop
from .memory_occupation import MemoryOccupation

PAUSE_MODES = ("abort", "retract", "in_place")


class RLControl:
    # built by Engine._start
    _weights: WeightService
    _memory: MemoryOccupation
    _loop: EngineLoop
    scheduler: Scheduler
    outputs: OutputProcessor

    # -- weights (RLHF refit; SGLang's names) -----------------------------------------------
    def update_weights_from_tensor(
        self,
        named_tensors: NamedTensors,
        flush_cache: bool = True,
        weight_version: str | None = None,
    ) -> str:
        """Copy new weights into the model in place: `named_tensors` are (name, tensor) pairs
        (or a dict) named as a Hugging Face model's `named_parameters()` names them, in any
        floating dtype, any subset of the model's weights. Checked whole before anything is
        written; written between two steps. Returns the new weight version (`weight_version`
        if given, else the count of updates). `flush_cache` (default) keeps KV computed with
        the old weights from ever being read again; False keeps the prefix cache as it is."""
        return self._weights.update_from_tensor(named_tensors, flush_cache, weight_version)

    def update_weights_from_disk(
        self, model_path: str | Path, flush_cache: bool = True, weight_version: str | None = None
    ) -> str:
        """Every weight from a checkpoint directory of this model's architecture and shapes,
        read one tensor at a time (generation waits while it is written)."""
        return self._weights.update_from_disk(model_path, flush_cache, weight_version)

    def init_weights_update_group(
        self,
        master_address: str,
        master_port: int,
        rank_offset: int,
        world_size: int,
        group_name: str = "weight_update_group",
        backend: str = "gloo",
    ) -> None:
        """Join a trainer's torch.distributed group (the trainer is rank 0 and hosts its
        store at master_address:master_port) as rank `rank_offset`; returns once all have
        joined. `backend`: gloo (CPU tensors) or nccl."""
        self._weights.init_group(
            master_address, master_port, rank_offset, world_size, group_name, backend
        )

    def update_weights_from_distributed(
        self,
        names: Sequence[str],
        dtypes: Sequence[str | torch.dtype],
        shapes: Sequence[Sequence[int]],
        group_name: str = "weight_update_group",
        flush_cache: bool = True,
        weight_version: str | None = None,
    ) -> str:
        """Receive `names` from rank 0 of the group, one broadcast each in order, with the
        given dtypes and shapes; then write them as `update_weights_from_tensor` does."""
        return self._weights.update_from_distributed(
            names, dtypes, shapes, group_name, flush_cache, weight_version
        )

    def destroy_weights_update_group(self, group_name: str = "weight_update_group") -> None:
        self._weights.destroy_group(group_name)

    def get_weight_version(self) -> str:
        """The weights' version: "default" for those loaded at start, then what each update
        set."""
        return self._weights.version

    # -- memory and flow control (RL; SGLang's names) ---------------------------------------
    def release_memory_occupation(self, tags: Sequence[str] | None = None) -> int:
        """Give the memory of `tags` ("weights", "kv_cache"; None: both) back to the system
        before returning (the bytes given back). Released weights read as zeros until an
        update writes them; released KV takes the prefix cache with it; requests are refused
        until resume_memory_occupation, and continue_generation waits for it. Requests in
        flight need a pause first; the KV cache also needs no request holding KV (pause with
        mode abort or retract)."""
        freed: int = self._loop.call(
            lambda: self._memory.release(tags, self.scheduler, self._loop.paused)
        )
        return freed

    def resume_memory_occupation(self, tags: Sequence[str] | None = None) -> None:
        """Take back what release_memory_occupation gave (pages return as they are written)."""
        self._loop.call(lambda: self._memory.resume(tags))

    def pause_generation(self, mode: str = "abort") -> int:
        """Stop running steps until continue_generation (new requests queue meanwhile);
        returns how many requests `mode` acted on: "abort" ends every request in flight
        (finish reason abort), "retract" sends the running ones back to the queue (their KV
        released, recomputed when they resume), "in_place" keeps them and their KV."""
        if mode not in PAUSE_MODES:
            raise ValueError(f"mode: {mode!r} is not one of {', '.join(PAUSE_MODES)}")
        count: int = self._loop.call(lambda: self._loop.pause(mode))
        return count

    def continue_generation(self) -> None:
        """Run steps again after pause_generation (refused while memory is released)."""

        def resume() -> None:
            self._memory.check_serving("continue_generation")
            self._loop.paused = False

        self._loop.call(resume)

    def _set_weight_version(self, version: str) -> None:
        self.outputs.weight_version = version
