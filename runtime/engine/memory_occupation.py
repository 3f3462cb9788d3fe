"""release_memory_occupation / resume_memory_occupation (SGLang's names): between rollouts, an
RL trainer that shares the machine takes back the memory of the engine's weights and KV cache,
and returns it before the next rollout.

On CPU the memory goes back to the system at once, before the call returns: the pages of
every weight tensor (and of the KV pool) are dropped in place (madvise), so the tensors keep
their addresses and read as zeros until written again. On CUDA each tensor's storage is
shrunk to nothing and the caching allocator empties its cache, so the memory is back with the
driver when the call returns; resume allocates it again, zeroed (the addresses change, which
nothing holds on to until CUDA graphs come with the GPU executor). Released weights are gone:
after resume_memory_occupation(["weights"]) the engine needs a weight update before it
generates anything meaningful, as in SGLang without a CPU backup. Released KV takes the
prefix cache with it. While either is released, new requests are refused. oneDNN-packed
weights are opaque to this and stay resident.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..executor.packed_linear import PackedLinear
from ..kvcache.kv_pool import KVPool
from ..scheduler.scheduler import Scheduler
from ..utils.host_memory import drop_pages

TAGS = ("weights", "kv_cache")


class MemoryOccupation:
    def __init__(self, model: nn.Module, kv_pool: KVPool, device: torch.device) -> None:
        self.model = model
        self.kv_pool = kv_pool
        self.device = device
        self.released: set[str] = set()
        self._cuda_bytes: dict[int, int] = {}  # a released CUDA tensor's storage size, by id

    def release(self, tags: Sequence[str] | None, scheduler: Scheduler, paused: bool) -> int:
        """Drop the memory of `tags` (all when None); returns the bytes given back. Runs on
        the engine thread, between steps."""
        chosen = check_tags(tags)
        for tag in chosen:
            if tag in self.released:
                raise ValueError(f"tags: {tag!r} is released already")
        if scheduler.has_work() and not paused:
            raise ValueError(
                "release_memory_occupation: requests are in flight; let them finish or "
                "pause_generation first"
            )
        if "kv_cache" in chosen and scheduler.num_running:
            raise ValueError(
                "release_memory_occupation: running requests hold KV; pause_generation with "
                "mode abort or retract first (in_place keeps their KV)"
            )
        freed = 0
        if "kv_cache" in chosen:
            scheduler.cache.flush()  # its entries' KV is about to read as zeros
            freed += self._drop([self.kv_pool.k, self.kv_pool.v])
        if "weights" in chosen:
            freed += self._drop(list(_weight_tensors(self.model)))
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # back to the driver, not kept by the caching allocator
            torch.cuda.synchronize(self.device)
        self.released.update(chosen)
        return freed

    def resume(self, tags: Sequence[str] | None) -> None:
        chosen = check_tags(tags)
        for tag in chosen:
            if tag not in self.released:
                raise ValueError(
                    f"tags: {tag!r} is not released (resume_memory_occupation without "
                    "release_memory_occupation)"
                )
        if self.device.type == "cuda":
            tensors = ([self.kv_pool.k, self.kv_pool.v] if "kv_cache" in chosen else []) + (
                list(_weight_tensors(self.model)) if "weights" in chosen else []
            )
            for t in tensors:  # the same size again, zeroed as a fresh pool reads
                t.untyped_storage().resize_(self._cuda_bytes.pop(id(t)))
                t.zero_()
        self.released.difference_update(chosen)  # (CPU: pages come back as they are written)

    def _drop(self, tensors: list[torch.Tensor]) -> int:
        if self.device.type != "cuda":
            return sum(drop_pages(t) for t in tensors)
        freed = 0
        for t in tensors:
            storage = t.untyped_storage()
            self._cuda_bytes[id(t)] = storage.nbytes()
            freed += storage.nbytes()
            storage.resize_(0)
        return freed

    def check_serving(self, call: str) -> None:
        if self.released:
            raise ValueError(
                f"{call}: the engine's {' and '.join(sorted(self.released))} memory is released; "
                "call resume_memory_occupation first"
            )


def check_tags(tags: Sequence[str] | None) -> list[str]:
    if tags is None:
        return list(TAGS)
    if isinstance(tags, str) or not isinstance(tags, Sequence) or not tags:
        raise ValueError(f"tags: expected a non-empty list of {', '.join(TAGS)}, got {tags!r}")
    for tag in tags:
        if tag not in TAGS:
            raise ValueError(f"tags: {tag!r} is not one of {', '.join(TAGS)}")
    return list(dict.fromkeys(tags))


def _weight_tensors(model: nn.Module) -> Iterable[torch.Tensor]:
    """Every tensor a weight update writes: parameters, and packed layers' buffers (not the
    rotary tables, which no update restores)."""
    seen: set[int] = set()
    tensors: list[torch.Tensor] = list(model.parameters())
    for module in model.modules():
        if isinstance(module, PackedLinear):
            tensors += [t for t in (module.packed, module.packed_many) if t is not None]
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            yield t
