"""SchedulerConfig: how many requests run at once and how prompt work is split across steps."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..utils.checks import check_int
from ..utils.options import option

POLICIES = ("fcfs", "lpm", "dfs-weight")

# Prompt tokens per step while requests decode (chunked prefill), by device. A CPU's matmuls
# are compute-bound from a few rows on, so each chunk row slows the decoders' step: on the
# benchmark model the decoders' p99 inter-token latency while a long prompt is prefilled was
# ~2.5x their undisturbed median with 64, ~2x with 32, which however doubles that prompt's
# time to first token and halves how many short prompts join a busy engine per step. A GPU
# computes thousands of rows in the time it takes to read the weights once.
CHUNKED_PREFILL_SIZE = {"cpu": 64, "cuda": 2048}


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_running_requests: int = option(256, "most requests decoding at once")
    max_prefill_tokens: int = option(8192, "prompt tokens per step")
    chunked_prefill_size: int | None = option(
        None,
        "largest piece of a prompt computed in one step while others decode (Sarathi-Serve); "
        f"default by device ({CHUNKED_PREFILL_SIZE}); -1: off",
    )
    schedule_policy: str = option(
        "lpm",
        "order of waiting requests: lpm (longest cached prefix first), dfs-weight (SGLang's "
        "radix-tree walk) or fcfs (arrival order)",
        choices=POLICIES,
    )

    def __post_init__(self) -> None:
        check_int("max_running_requests", self.max_running_requests, low=1)
        check_int("max_prefill_tokens", self.max_prefill_tokens, low=1)
        chunk = self.chunked_prefill_size
        if chunk is not None and chunk != -1:
            check_int("chunked_prefill_size", chunk, low=-1)
            if chunk < 1:
                raise ValueError(
                    f"chunked_prefill_size: must be >= 1, or -1 to disable; got {chunk}"
                )
        if self.schedule_policy not in POLICIES:
            raise ValueError(
                f"schedule_policy: expected one of {', '.join(POLICIES)}; "
                f"got {self.schedule_policy!r}"
            )

    def for_device(self, device_type: str) -> SchedulerConfig:
        """This config with the by-device default filled in."""
        if self.chunked_prefill_size is not None:
            return self
        size = CHUNKED_PREFILL_SIZE.get(device_type, CHUNKED_PREFILL_SIZE["cuda"])
        return replace(self, chunked_prefill_size=size)

    @property
    def chunk_limit(self) -> int | None:
        """The chunk size in force; None: prompts are never cut while others decode."""
        size = self.chunked_prefill_size
        return None if size is None or size == -1 else size
