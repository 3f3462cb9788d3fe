"""PrefixIndex: the longest prefix shared with any sequence added, against brute force."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from loomlm.runtime.scheduler.prefix_index import PrefixIndex

tokens = st.lists(st.integers(0, 3), max_size=12)


def shared(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@settings(max_examples=300, deadline=None)
@given(st.lists(tokens, max_size=6), tokens)
def test_shared_length_is_the_longest_common_prefix_with_any_added(added, query):
    index = PrefixIndex()
    for seq in added:
        index.add(seq)
    expected = max((shared(seq, query) for seq in added), default=0)
    assert index.shared_length(query) == expected
