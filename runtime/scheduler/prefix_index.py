"""The token prefixes of the prompts admitted in one step, without any KV: how much of a
waiting request's prompt will be in the cache once they have run (see the scheduler's
deferral of requests that share a long uncached prefix)."""

from __future__ import annotations

from collections.abc import Sequence


class PrefixIndex:
    """A token trie. Adding n tokens costs O(n); so does asking about n tokens."""

    __slots__ = ("_root",)

    def __init__(self) -> None:
        self._root: dict[int, dict] = {}

    def add(self, tokens: Sequence[int]) -> None:
        node = self._root
        for t in tokens:
            node = node.setdefault(t, {})

    def shared_length(self, tokens: Sequence[int]) -> int:
        """The length of the longest prefix of `tokens` that some added sequence starts with."""
        node = self._root
        for i, t in enumerate(tokens):
            child = node.get(t)
            if child is None:
                return i
            node = child
        return len(tokens)
