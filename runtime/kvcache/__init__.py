"""The KV cache: the slot pool and its size, and the prefix caches that share slots by
token prefix."""
