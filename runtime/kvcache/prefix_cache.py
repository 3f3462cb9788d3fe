"""The prefix cache interface: KV slots of token prefixes kept after their requests finish.

Two implementations: `RadixCache` (radix_cache.py), which shares prefixes across requests,
and `NoPrefixCache` below, which keeps nothing (`disable_radix_cache=True`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import torch

FreeSlots = Callable[[torch.Tensor], None]


class PrefixNode(Protocol):
    """Where a match ends in a cache that keeps a tree (the radix cache's node)."""

    @property
    def parent(self) -> PrefixNode | None: ...


class PrefixMatch(NamedTuple):
    """The longest cached prefix of some tokens: `slots[i]` holds the KV of token i."""

    slots: torch.Tensor  # [length] int64, host
    length: int
    node: PrefixNode | None  # the implementation's handle (None: it keeps no tree)


class PrefixCache(ABC):
    """KV slots shared by token prefix.

    Ownership: a request that holds a match `m` reads `m.slots` for its first `m.length`
    tokens; those slots belong to the cache. The slots of its later tokens belong to the
    request until it hands them over with `cache_running` or `cache_finished`.

    Invariants callers rely on:
    - A matched prefix must be locked before its slots are used, and stays locked (never
      evicted) until unlocked; lock and unlock come in pairs.
    - `evict` frees only unlocked slots, through the `free` callback given at construction.
    - `evictable_size + protected_size` is the number of slots the cache owns; protected
      slots are those on a locked path.
    """

    @abstractmethod
    def match_prefix(self, tokens: Sequence[int]) -> PrefixMatch: ...

    @abstractmethod
    def lock(self, match: PrefixMatch) -> None: ...

    @abstractmethod
    def unlock(self, match: PrefixMatch) -> None: ...

    @abstractmethod
    def cache_running(
        self, tokens: Sequence[int], slots: torch.Tensor, held: PrefixMatch
    ) -> PrefixMatch:
        """Hand a running request's KV for `tokens` (its `slots`, one per token) to the cache.

        Returns the request's new locked match covering `tokens` (the old one is unlocked).
        Where the cache already held some of these tokens, it keeps its own slots and frees the
        request's copies: the caller must read its slots from the returned match.
        """

    @abstractmethod
    def cache_finished(self, tokens: Sequence[int], slots: torch.Tensor, held: PrefixMatch) -> None:
        """A request ends: its KV for `tokens` goes to the cache (or is freed), `held` unlocked."""

    @abstractmethod
    def evict(self, num_tokens: int) -> int:
        """Free at least `num_tokens` unlocked slots if there are that many; returns how many."""

    @abstractmethod
    def flush(self) -> None:
        """Free everything. Refused (RuntimeError) while any path is locked."""

    @abstractmethod
    def retire(self) -> None:
        """Make every entry unreachable by later matches (the weights changed while requests
        run): unlocked ones are freed now, locked ones as their holders unlock them. The
        holders must not hand their KV to the cache afterwards."""

    @property
    @abstractmethod
    def evictable_size(self) -> int: ...

    @property
    @abstractmethod
    def protected_size(self) -> int: ...

    @property
    def size(self) -> int:
        return self.evictable_size + self.protected_size

    @property
    def evicted_tokens(self) -> int:
        return 0


EMPTY_SLOTS = torch.empty(0, dtype=torch.int64)


class NoPrefixCache(PrefixCache):
    """Caches nothing: every request computes its whole prompt and frees its slots at the end."""

    def __init__(self, free: FreeSlots) -> None:
        self._free = free

    def match_prefix(self, tokens: Sequence[int]) -> PrefixMatch:
        return PrefixMatch(EMPTY_SLOTS, 0, None)

    def lock(self, match: PrefixMatch) -> None:
        pass

    def unlock(self, match: PrefixMatch) -> None:
        pass

    def cache_running(
        self, tokens: Sequence[int], slots: torch.Tensor, held: PrefixMatch
    ) -> PrefixMatch:
        return held  # the request keeps its slots

    def cache_finished(self, tokens: Sequence[int], slots: torch.Tensor, held: PrefixMatch) -> None:
        self._free(slots[held.length :])

    def evict(self, num_tokens: int) -> int:
        return 0

    def flush(self) -> None:
        pass

    def retire(self) -> None:
        pass

    @property
    def evictable_size(self) -> int:
        return 0

    @property
    def protected_size(self) -> int:
        return 0
