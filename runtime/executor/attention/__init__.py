from .base import AttentionBackend
from .torch_backend import TorchAttention

__all__ = ["AttentionBackend", "TorchAttention"]
