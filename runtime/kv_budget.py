"""How many KV slots to allocate: an explicit token budget, or a share of free memory."""

from __future__ import annotations

import torch

from .models.config import ModelConfig

DEFAULT_MEM_FRACTION = {"cpu": 0.2, "cuda": 0.8}


def kv_slots_for(
    config: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    max_context: int,
    max_running_requests: int,
    max_total_tokens: int | None,
    mem_fraction: float | None,
) -> int:
    if max_total_tokens is not None:
        if (
            isinstance(max_total_tokens, bool)
            or not isinstance(max_total_tokens, int)
            or max_total_tokens < 2
        ):
            raise ValueError(
                f"max_total_tokens: expected an integer >= 2, got {max_total_tokens!r}"
            )
        return max_total_tokens
    fraction = DEFAULT_MEM_FRACTION.get(device.type, 0.5) if mem_fraction is None else mem_fraction
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"mem_fraction: must be in (0, 1], got {fraction}")
    element = torch.empty((), dtype=dtype).element_size()
    per_token = 2 * config.num_layers * config.num_kv_heads * config.head_dim * element
    by_memory = int(free_memory_bytes(device) * fraction) // per_token
    # More than every running request at full context can never be used.
    return max(2, min(by_memory, max_running_requests * max_context))


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30  # no /proc (macOS, Windows): assume 4 GiB
