"""RadixCache under random sequences of operations, checked against a plain model after each step.

The model is a dict from every cached token prefix (a tuple) to the slot holding its last
token's KV; the pool is a set of free slot ids whose `free` callback refuses double frees.
"""

from __future__ import annotations

import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from loomlm.runtime.kvcache.prefix_cache import NoPrefixCache, PrefixMatch
from loomlm.runtime.kvcache.radix_cache import RadixCache

NUM_SLOTS = 64
# A tiny alphabet and short sequences, so that random sequences share prefixes often.
token_lists = st.lists(st.integers(0, 3), min_size=1, max_size=10)


class RadixCacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.free: set[int] = set(range(NUM_SLOTS))
        self.cache = RadixCache(self._free)
        self.model: dict[tuple[int, ...], int] = {}
        self.held: list[tuple[list[int], PrefixMatch]] = []
        # requests in flight: tokens, the slot of each token, the locked match they read
        self.requests: list[tuple[list[int], torch.Tensor, PrefixMatch]] = []

    def _free(self, slots: torch.Tensor) -> None:
        for s in slots.tolist():
            assert s not in self.free, f"slot {s} freed twice"
            self.free.add(s)

    def _alloc(self, n: int) -> torch.Tensor:
        taken = sorted(self.free)[:n]
        self.free.difference_update(taken)
        return torch.tensor(taken, dtype=torch.int64)

    def _evict(self, n: int) -> int:
        """Evict through the cache and drop what it freed from the model."""
        before = set(self.free)
        freed = self.cache.evict(n)
        newly = self.free - before
        assert len(newly) == freed
        self.model = {p: s for p, s in self.model.items() if s not in newly}
        return freed

    def _longest_cached(self, tokens: list[int]) -> int:
        k = 0
        while k < len(tokens) and tuple(tokens[: k + 1]) in self.model:
            k += 1
        return k

    def _check_match(self, tokens: list[int], match: PrefixMatch) -> None:
        assert match.length == self._longest_cached(tokens)
        assert match.slots.tolist() == [
            self.model[tuple(tokens[: i + 1])] for i in range(match.length)
        ]
        assert self.cache.path_of(match.node) == tokens[: match.length]

    # -- operations --------------------------------------------------------------------------
    @rule(tokens=token_lists)
    def insert(self, tokens: list[int]) -> None:
        if len(tokens) > len(self.free):
            self._evict(len(tokens) - len(self.free))
        if len(tokens) > len(self.free):
            return
        slots = self._alloc(len(tokens))
        known = self._longest_cached(tokens)
        existing = self.cache.insert(tokens, slots)
        assert existing == known
        self._free(slots[:existing])  # duplicates stay the caller's
        for i in range(existing, len(tokens)):
            self.model[tuple(tokens[: i + 1])] = int(slots[i])

    @rule(tokens=token_lists)
    def match(self, tokens: list[int]) -> None:
        self._check_match(tokens, self.cache.match_prefix(tokens))

    @rule(tokens=token_lists)
    def lock(self, tokens: list[int]) -> None:
        match = self.cache.match_prefix(tokens)
        self.cache.lock(match)
        self.held.append((tokens[: match.length], match))

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def unlock(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.held) - 1))
        _, match = self.held.pop(i)
        self.cache.unlock(match)

    # A request's life, in steps that interleave with everything else: match and lock, compute
    # the rest into slots of its own, hand them to the cache while running, finish.
    @rule(tokens=token_lists)
    def start_request(self, tokens: list[int]) -> None:
        match = self.cache.match_prefix(tokens)
        self.cache.lock(match)
        rest = len(tokens) - match.length
        if rest > len(self.free):
            self._evict(rest - len(self.free))
        if rest > len(self.free):
            self.cache.unlock(match)
            return
        row = torch.cat((match.slots, self._alloc(rest)))
        self.requests.append((tokens, row, match))

    @precondition(lambda self: self.requests)
    @rule(data=st.data(), finish=st.booleans())
    def commit_request(self, data: st.DataObject, finish: bool) -> None:
        i = data.draw(st.integers(0, len(self.requests) - 1))
        tokens, row, held = self.requests.pop(i)
        known = self._longest_cached(tokens)
        assert known >= held.length
        freed_before = set(self.free)
        if finish:
            self.cache.cache_finished(tokens, row, held)
        else:
            match = self.cache.cache_running(tokens, row, held)
        # The cache kept its own copies of what it had; the request's duplicates were freed.
        assert self.free - freed_before == set(row[held.length : known].tolist())
        for j in range(known, len(tokens)):
            self.model[tuple(tokens[: j + 1])] = int(row[j])
        if not finish:
            self._check_match(tokens, match)
            self.requests.append((tokens, match.slots, match))

    @rule(n=st.integers(0, NUM_SLOTS))
    def evict(self, n: int) -> None:
        evictable = self.cache.evictable_size
        matches = [m for _, m in self.held] + [m for _, _, m in self.requests]
        locked = {s for m in matches for s in m.slots.tolist()}
        freed_before = set(self.free)
        assert self._evict(n) >= min(n, evictable)
        assert not (self.free - freed_before) & locked  # locked paths survive
        for tokens, _ in self.held:
            self._check_match(tokens, self.cache.match_prefix(tokens))

    @rule()
    def flush(self) -> None:
        if any(m.length for _, m in self.held) or any(m.length for _, _, m in self.requests):
            try:
                self.cache.flush()
            except RuntimeError:
                return
            raise AssertionError("flush must be refused while a path is locked")
        self.cache.flush()
        self.model.clear()
        assert self.cache.size == 0 and not list(self.cache.nodes())

    # -- invariants --------------------------------------------------------------------------
    @invariant()
    def every_slot_owned_once(self) -> None:
        in_tree = [s for node in self.cache.nodes() for s in node.slots.tolist()]
        in_requests = [s for _, row, m in self.requests for s in row[m.length :].tolist()]
        owned = in_tree + in_requests + sorted(self.free)
        assert sorted(owned) == list(range(NUM_SLOTS))
        assert sorted(in_tree) == sorted(self.model.values())

    @invariant()
    def reference_counts_match_the_locks(self) -> None:
        expected: dict[int, int] = {}
        for match in [m for _, m in self.held] + [m for _, _, m in self.requests]:
            node = match.node
            while node is not self.cache.root:
                expected[id(node)] = expected.get(id(node), 0) + 1
                node = node.parent
        for node in self.cache.nodes():
            assert node.lock_ref >= 0
            assert node.lock_ref == expected.get(id(node), 0)

    @invariant()
    def sizes_add_up(self) -> None:
        nodes = list(self.cache.nodes())
        protected = sum(len(n.key) for n in nodes if n.lock_ref > 0)
        total = sum(len(n.key) for n in nodes)
        assert self.cache.protected_size == protected
        assert self.cache.evictable_size == total - protected
        assert self.cache.size == len(self.model)

    @invariant()
    def tree_is_well_formed(self) -> None:
        for node in self.cache.nodes():
            assert node.key and len(node.key) == len(node.slots)
            assert node.parent.children[node.key[0]] is node
        leaves = {id(n) for n in self.cache.nodes() if not n.children}
        assert leaves == {id(n) for n in self.cache._leaves}


TestRadixCache = RadixCacheMachine.TestCase
TestRadixCache.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_lru_evicts_the_least_recently_used_leaf_first() -> None:
    freed: list[int] = []
    cache = RadixCache(lambda s: freed.extend(s.tolist()))
    cache.insert([1, 2, 3], torch.tensor([10, 11, 12]))
    cache.insert([1, 2, 4], torch.tensor([20, 21, 22]))  # shares [1, 2]: keeps slots 10, 11
    cache.match_prefix([1, 2, 3])  # touch the first branch
    assert cache.evict(1) == 1
    assert freed == [22]
    assert cache.evict(1) == 1 and freed == [22, 12]
    assert cache.evict(5) == 2 and sorted(freed[2:]) == [10, 11]
    assert cache.size == 0


def test_a_locked_path_is_never_evicted_and_unlock_cannot_go_negative() -> None:
    cache = RadixCache(lambda s: None)
    cache.insert([5, 6, 7], torch.tensor([0, 1, 2]))
    match = cache.match_prefix([5, 6])
    cache.lock(match)
    assert cache.protected_size == 2 and cache.evictable_size == 1
    assert cache.evict(10) == 1  # only the unlocked tail
    assert cache.match_prefix([5, 6, 7]).length == 2
    cache.unlock(match)
    try:
        cache.unlock(match)
    except RuntimeError as exc:
        assert "unlock" in str(exc)
    else:
        raise AssertionError("a second unlock must raise")


def test_no_prefix_cache_frees_what_the_request_computed() -> None:
    freed: list[int] = []
    cache = NoPrefixCache(lambda s: freed.extend(s.tolist()))
    match = cache.match_prefix([1, 2, 3])
    assert match.length == 0
    cache.lock(match)
    assert cache.cache_running([1, 2, 3], torch.tensor([4, 5, 6]), match) is match
    cache.cache_finished([1, 2, 3], torch.tensor([4, 5, 6]), match)
    assert freed == [4, 5, 6] and cache.size == 0


def test_retire_frees_what_no_one_holds_now_and_the_rest_as_it_is_unlocked() -> None:
    """After a weight update while requests run: nothing cached before is matched again; what
    no request holds is freed at once, what one holds when its last holder lets go."""
    freed: list[int] = []
    cache = RadixCache(lambda s: freed.extend(s.tolist()))
    cache.insert([1, 2, 3], torch.tensor([10, 11, 12]))
    cache.insert([1, 2, 4], torch.tensor([20, 21, 22]))  # keeps 10, 11 for [1, 2]
    cache.insert([5, 6], torch.tensor([30, 31]))
    held = cache.match_prefix([1, 2, 3])
    cache.lock(held)
    cache.retire()
    assert sorted(freed) == [22, 30, 31]
    assert cache.match_prefix([1, 2, 3]).length == 0 and not list(cache.nodes())
    assert (cache.protected_size, cache.evictable_size) == (3, 0)
    cache.insert([1, 2, 3], torch.tensor([40, 41, 42]))  # the same tokens, new KV: a new entry
    assert cache.match_prefix([1, 2, 3]).slots.tolist() == [40, 41, 42]
    cache.unlock(held)
    assert sorted(freed) == [10, 11, 12, 22, 30, 31]
    assert (cache.protected_size, cache.evictable_size) == (0, 3)
    cache.flush()
    assert sorted(freed) == [10, 11, 12, 22, 30, 31, 40, 41, 42]
