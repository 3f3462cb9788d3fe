"""How many KV slots to allocate: an explicit token budget, or a share of free memory."""

from __future__ import annotations

import torch

from ..executor.models.config import ModelConfig
from ..utils.host_memory import reserved_bytes
from .config import CacheConfig


def kv_slots_for(
    config: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    max_context: int,
    max_running_requests: int,
    cache: CacheConfig,
) -> int:
    if cache.max_total_tokens is not None:
        return cache.max_total_tokens
    fraction = cache.memory_fraction(device.type)
    element = torch.empty((), dtype=dtype).element_size()
    per_token = 2 * config.num_layers * config.num_kv_heads * config.head_dim * element
    by_memory = int(free_memory_bytes(device) * fraction) // per_token
    # More than every running request at full context can never be used.
    return max(2, min(by_memory, max_running_requests * max_context))


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    # Pools this process mapped but has not written yet are promised, though not yet taken.
    return max(0, _available_host_bytes() - reserved_bytes())


def _available_host_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30  # no /proc (macOS, Windows): assume 4 GiB
