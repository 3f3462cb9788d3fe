"""The stop-string automaton finds what a plain search finds, whatever the chunking, and
holds back exactly the characters that could still begin a stop string."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from loomlm.runtime.sampling.stop_strings import StopStrings

TEXT = st.text(alphabet="abc\n", max_size=40)
STOPS = st.lists(st.text(alphabet="abc\n", min_size=1, max_size=5), min_size=1, max_size=6)


def first_match(text: str, stops: list[str]) -> tuple[int, int] | None:
    """(start, end) of the stop string that ends first; among those, the longest."""
    best = None
    for s in stops:
        at = text.find(s)
        while at != -1:
            end = at + len(s)
            if best is None or end < best[1] or (end == best[1] and at < best[0]):
                best = (at, end)
            at = text.find(s, at + 1)
    return best


def pending(text: str, stops: list[str]) -> int:
    """The longest suffix of `text` that is a proper prefix of a stop string."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


@settings(max_examples=300, deadline=None)
@given(stops=STOPS, text=TEXT, cuts=st.lists(st.integers(0, 40), max_size=6))
def test_chunked_scan_equals_a_plain_search(stops, text, cuts):
    automaton = StopStrings(stops)
    state, pos, found = 0, 0, None
    for end in sorted({min(c, len(text)) for c in cuts} | {len(text)}):
        state, found = automaton.scan(state, text[:end], pos)
        pos = end
        if found is not None:
            break
    expected = first_match(text, stops)
    if expected is None:
        assert found is None
        assert automaton.depth[state] == pending(text, stops)
    else:
        assert found is not None and (found.start, found.end) == expected
        assert text[found.start : found.end] == found.string


def test_ten_thousand_strings_find_the_first_to_end():
    stops = [f"stop{i:05d}" for i in range(10_000)]
    automaton = StopStrings(stops)
    text = "x" * 1000 + "stop0999" + "stop09999"
    state, found = automaton.scan(0, text, 0)
    assert found is not None and found.string == "stop09999"
    assert found.start == text.index("stop09999")
