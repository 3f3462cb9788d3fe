"""Weight updates of a running engine (RLHF refit): from tensors, from disk, and broadcast by a
trainer over torch.distributed."""

from .sync_group import SyncGroup

__all__ = ["SyncGroup"]
