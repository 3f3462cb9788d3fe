"""RadixCache: a radix tree of token prefixes whose nodes hold the KV slots of their tokens.

Each edge is labelled with a run of token ids and holds one KV slot per token, so a path from
the root spells a prefix and lists where its KV lives (RadixAttention, Zheng et al. 2024).
Running requests lock the path they read, which protects it from eviction; unlocked leaves
are evicted least recently used first when the pool needs room.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Sequence

import torch

from .prefix_cache import EMPTY_SLOTS, FreeSlots, PrefixCache, PrefixMatch


class _Node:
    __slots__ = ("key", "slots", "children", "parent", "lock_ref", "last_access", "retired")

    def __init__(self, key: list[int], slots: torch.Tensor, parent: _Node | None) -> None:
        self.key = key  # the edge's token ids, len(key) == len(slots)
        self.slots = slots
        self.children: dict[int, _Node] = {}  # by the first token of the child's key
        self.parent = parent
        self.lock_ref = 0  # running requests whose locked path passes through this node
        self.last_access = 0
        self.retired = False  # out of the tree (retire): freed when its last lock goes


def _common_len(key: list[int], tokens: Sequence[int], start: int) -> int:
    """How many leading tokens of `key` equal tokens[start:]."""
    n = min(len(key), len(tokens) - start)
    if key[:n] == list(tokens[start : start + n]):  # the common case, compared in C
        return n
    i = 0
    while key[i] == tokens[start + i]:
        i += 1
    return i


class RadixCache(PrefixCache):
    def __init__(self, free: FreeSlots) -> None:
        self._free = free
        self._clock = itertools.count(1)
        self._reset()

    def _reset(self) -> None:
        # The root object survives flushes: matches of the empty prefix keep pointing at it.
        if not hasattr(self, "root"):
            self.root = _Node([], EMPTY_SLOTS, None)
            self.root.lock_ref = 1  # never evicted, never counted
        self.root.children = {}
        self._leaves: set[_Node] = set()
        self._evictable = 0
        self._protected = 0
        self._evicted = 0

    # -- lookup ------------------------------------------------------------------------------
    def match_prefix(self, tokens: Sequence[int]) -> PrefixMatch:
        node, pos, pieces = self._walk(tokens)
        slots = torch.cat(pieces) if len(pieces) > 1 else (pieces[0] if pieces else EMPTY_SLOTS)
        return PrefixMatch(slots, pos, node)

    def _walk(self, tokens: Sequence[int]) -> tuple[_Node, int, list[torch.Tensor]]:
        """Follow `tokens` down the tree, splitting the last edge where the match ends inside
        it, so that the returned node's path is exactly the matched prefix."""
        now = next(self._clock)
        node, pos, pieces = self.root, 0, []
        node.last_access = now
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                break
            n = _common_len(child.key, tokens, pos)
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            pieces.append(child.slots)
            node, pos = child, pos + n
        return node, pos, pieces

    def _split(self, node: _Node, n: int) -> _Node:
        """Cut `node`'s edge after n tokens; returns the new upper half."""
        parent = node.parent
        assert parent is not None
        upper = _Node(node.key[:n], node.slots[:n], parent)
        upper.lock_ref = node.lock_ref  # every lock through node passes through upper
        upper.last_access = node.last_access
        upper.children[node.key[n]] = node
        parent.children[node.key[0]] = upper
        node.key, node.slots, node.parent = node.key[n:], node.slots[n:], upper
        return upper

    # -- insertion ---------------------------------------------------------------------------
    def insert(self, tokens: Sequence[int], slots: torch.Tensor) -> int:
        """Add `tokens` with their KV `slots`; returns how many leading tokens were already
        cached. The cache keeps its own slots for those (the caller still owns its copies of
        them) and takes ownership of `slots[returned:]`."""
        node, pos, _ = self._walk(tokens)
        if pos < len(tokens):
            leaf = _Node(list(tokens[pos:]), slots[pos:].clone(), node)
            leaf.last_access = node.last_access
            node.children[tokens[pos]] = leaf
            self._leaves.discard(node)
            self._leaves.add(leaf)
            self._evictable += len(leaf.key)
        return pos

    def cache_running(
        self, tokens: Sequence[int], slots: torch.Tensor, held: PrefixMatch
    ) -> PrefixMatch:
        existing = self.insert(tokens, slots)
        # Tokens the cache already had beyond the request's own match (another request put
        # them there meanwhile): the request's copies are duplicates.
        self._free(slots[held.length : existing])
        match = self.match_prefix(tokens)
        self.lock(match)
        self.unlock(held)
        return match

    def cache_finished(self, tokens: Sequence[int], slots: torch.Tensor, held: PrefixMatch) -> None:
        existing = self.insert(tokens, slots)
        self._free(slots[held.length : existing])
        self.unlock(held)

    # -- locking -----------------------------------------------------------------------------
    def lock(self, match: PrefixMatch) -> None:
        node = _node_of(match)
        while node is not None and node is not self.root:
            if node.lock_ref == 0:
                self._evictable -= len(node.key)
                self._protected += len(node.key)
            node.lock_ref += 1
            node = node.parent

    def unlock(self, match: PrefixMatch) -> None:
        node = _node_of(match)
        while node is not None and node is not self.root:
            if node.lock_ref <= 0:
                raise RuntimeError("radix cache: unlock without a matching lock")
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._protected -= len(node.key)
                if node.retired:  # its descendants, unlocked before it, are freed already
                    self._free(node.slots)
                else:
                    self._evictable += len(node.key)
            node = node.parent

    # -- eviction ----------------------------------------------------------------------------
    def evict(self, num_tokens: int) -> int:
        heap = [(leaf.last_access, id(leaf), leaf) for leaf in self._leaves if not leaf.lock_ref]
        heapq.heapify(heap)
        freed = 0
        while freed < num_tokens and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None
            self._free(leaf.slots)
            freed += len(leaf.key)
            self._evictable -= len(leaf.key)
            del parent.children[leaf.key[0]]
            self._leaves.discard(leaf)
            if parent is not self.root and not parent.children:
                self._leaves.add(parent)
                if not parent.lock_ref:
                    heapq.heappush(heap, (parent.last_access, id(parent), parent))
        self._evicted += freed
        return freed

    def flush(self) -> None:
        if self._protected:
            raise RuntimeError("radix cache: cannot flush while requests hold cached prefixes")
        for node in self.nodes():
            self._free(node.slots)
        evicted = self._evicted
        self._reset()
        self._evicted = evicted

    def retire(self) -> None:
        held = [node for node in self.nodes() if node.lock_ref]  # whole paths from the root
        for node in self.nodes():
            if not node.lock_ref:  # an unlocked node's whole subtree is unlocked
                self._free(node.slots)
        for node in held:  # unlock walks up through parents: the links down are not needed
            node.retired = True
            node.children = {}
        self.root.children = {}
        self._leaves = set()
        self._evictable = 0

    # -- accounting --------------------------------------------------------------------------
    @property
    def evictable_size(self) -> int:
        return self._evictable

    @property
    def protected_size(self) -> int:
        return self._protected

    @property
    def evicted_tokens(self) -> int:
        return self._evicted

    def nodes(self) -> Iterator[_Node]:
        """Every node but the root, parents before children."""
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def path_of(self, node: _Node) -> list[int]:
        """The token prefix that `node`'s path spells."""
        keys = []
        while node is not self.root:
            keys.append(node.key)
            node = node.parent  # type: ignore[assignment]
        return [t for key in reversed(keys) for t in key]


def _node_of(match: PrefixMatch) -> _Node | None:
    """Where a match of this cache ends (its matches always carry a node)."""
    assert isinstance(match.node, _Node)
    return match.node
