"""CacheConfig: the size of the KV pool and whether finished KV is kept for reuse."""

from __future__ import annotations

from dataclasses import dataclass

from ..utils.checks import check_bool, check_float, check_int
from ..utils.options import option

# Share of free memory the KV pool takes when neither max_total_tokens nor mem_fraction is
# given: the host's memory is shared with everything else on the machine; a GPU's is not.
DEFAULT_MEM_FRACTION = {"cpu": 0.2, "cuda": 0.8}


@dataclass(frozen=True, slots=True)
class CacheConfig:
    max_total_tokens: int | None = option(
        None, "KV pool size in tokens (default: mem_fraction of free memory)"
    )
    mem_fraction: float | None = option(
        None,
        f"share of free (host or device) memory the KV pool may take; default by device "
        f"({DEFAULT_MEM_FRACTION})",
        flags=("--mem-fraction-static",),
    )
    disable_radix_cache: bool = option(
        False, "compute every prompt in full and keep no KV between requests"
    )

    def __post_init__(self) -> None:
        if self.max_total_tokens is not None:
            check_int("max_total_tokens", self.max_total_tokens, low=2)
        if self.mem_fraction is not None:
            check_float("mem_fraction", self.mem_fraction, low=0.0, low_open=True, high=1.0)
        check_bool("disable_radix_cache", self.disable_radix_cache)

    def memory_fraction(self, device_type: str) -> float:
        if self.mem_fraction is not None:
            return self.mem_fraction
        return DEFAULT_MEM_FRACTION.get(device_type, 0.5)
