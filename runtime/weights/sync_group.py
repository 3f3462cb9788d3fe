"""A torch.distributed group between a trainer and an engine, over which the trainer broadcasts
new weights: SGLang's `init_weights_update_group` / `update_weights_from_distributed`, the way
OpenRLHF, TRL's server mode and veRL sync an engine that runs in another process.

The group stands alone: a TCPStore (hosted by rank 0, the trainer) and a gloo (CPU) or NCCL
(GPU) process group built on it, with no default process group in either process, so a
trainer launched by torchrun keeps its own and the engine's process is not tied to it. Every
group name gets its own key space in the store (a PrefixStore), so a second group on the same
store does not rendezvous with the first.

Trainer side::

    from loomlm.runtime.weights import SyncGroup
    group = SyncGroup("127.0.0.1", port, rank=0, world_size=2, group_name="weights")
    # (at the same time, the engine: init_weights_update_group("127.0.0.1", port, 1, 2, ...))
    for name, param in model.named_parameters():   # while the engine receives them
        group.broadcast(param.data)
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

BACKENDS = ("gloo", "nccl")
DEFAULT_TIMEOUT = timedelta(seconds=300)


class SyncGroup:
    """One member of a weight-broadcast group; construction waits until all have joined."""

    def __init__(
        self,
        master_address: str,
        master_port: int,
        rank: int,
        world_size: int,
        group_name: str = "weight_update_group",
        backend: str = "gloo",
        timeout: timedelta = DEFAULT_TIMEOUT,
    ) -> None:
        check_group_args(master_address, master_port, rank, world_size, group_name, backend)
        self.rank, self.world_size = rank, world_size
        self.group_name, self.backend = group_name, backend
        self._store = dist.TCPStore(
            master_address, master_port, world_size, is_master=rank == 0, timeout=timeout
        )
        prefixed = dist.PrefixStore(group_name, self._store)
        self._group: Any
        if backend == "gloo":
            options = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]
            options._timeout = timeout
            options._devices = [_gloo_device(master_address)]
            self._group = dist.ProcessGroupGloo(prefixed, rank, world_size, options)
        else:
            options = dist.ProcessGroupNCCL.Options()
            self._group = dist.ProcessGroupNCCL(prefixed, rank, world_size, options)

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        """Send `tensor` from rank `src` to every member (in place on the receivers)."""
        self._group.broadcast(tensor, src).wait()

    def close(self) -> None:
        """Leave the group (its sockets close; the other members' next call fails)."""
        shutdown = getattr(self._group, "shutdown", None)
        if shutdown is not None:
            shutdown()
        del self._group
        del self._store


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _gloo_device(master_address: str) -> Any:
    """Where gloo's sockets listen: loopback when the trainer is on this machine (gloo's
    default resolves the host name, which in containers may not resolve at all), else the
    interface the host name resolves to."""
    if master_address in LOOPBACK or master_address.startswith("127."):
        return dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")
    return dist.ProcessGroupGloo.create_default_device()


def check_group_args(
    master_address: str, master_port: int, rank: int, world_size: int, group_name: str, backend: str
) -> None:
    if not isinstance(master_address, str) or not master_address:
        raise ValueError("master_address: expected a host name or address")
    if not isinstance(master_port, int) or not 0 < master_port < 65536:
        raise ValueError(f"master_port: expected a port in 1-65535, got {master_port!r}")
    if not isinstance(world_size, int) or world_size < 2:
        raise ValueError(
            f"world_size: expected at least 2 (the trainer and the engine), got {world_size!r}"
        )
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(
            f"rank_offset: expected 0 <= rank < world_size ({world_size}), got {rank!r}"
        )
    if not isinstance(group_name, str) or not group_name:
        raise ValueError("group_name: expected a non-empty string")
    if backend not in BACKENDS:
        raise ValueError(
            f"backend: {backend!r} is not supported; expected one of {', '.join(BACKENDS)}"
        )
