"""Finding a request's stop strings in its text as it grows, in time proportional to the new
text whatever the number of strings (an Aho-Corasick automaton, built once per
SamplingParams).

Searching every stop string in every step costs (strings x text) on the engine thread: ten
thousand stop strings made everyone's steps several times slower. The automaton reads each
new character once, and its state also says how many trailing characters could still be the
start of a stop string: exactly what a stream must hold back, no more.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple


class StopMatch(NamedTuple):
    start: int  # where the stop string begins in the text
    end: int  # just past its end
    string: str


class StopStrings:
    """The automaton of a set of stop strings. State 0 is "nothing matched"; a state's depth
    is the length of the longest suffix of the text read so far that begins a stop string."""

    __slots__ = ("_goto", "_fail", "_match", "depth")

    def __init__(self, strings: Sequence[str]) -> None:
        goto: list[dict[str, int]] = [{}]
        depth = [0]
        ends: list[str | None] = [None]  # the stop string that ends exactly at this state
        for s in strings:
            state = 0
            for ch in s:
                nxt = goto[state].get(ch)
                if nxt is None:
                    nxt = len(goto)
                    goto[state][ch] = nxt
                    goto.append({})
                    depth.append(depth[state] + 1)
                    ends.append(None)
                state = nxt
            ends[state] = s
        fail = [0] * len(goto)
        # match[s]: the longest stop string that is a suffix of state s's text (it starts
        # earliest among those ending here), found along the failure links.
        match: list[str | None] = list(ends)
        queue = list(goto[0].values())
        for state in queue:  # breadth first: a state's failure target is shallower
            for ch, child in goto[state].items():
                f = fail[state]
                while f and ch not in goto[f]:
                    f = fail[f]
                target = goto[f].get(ch, 0)
                fail[child] = target if target != child else 0
                if match[child] is None:
                    match[child] = match[fail[child]]
                queue.append(child)
        self._goto = goto
        self._fail = fail
        self._match = match
        self.depth = depth

    def scan(self, state: int, text: str, start: int) -> tuple[int, StopMatch | None]:
        """Read text[start:] from `state`; stop at the first position where a stop string
        ends. Returns the state reached and that match (None when the text ran out)."""
        goto, fail, match = self._goto, self._fail, self._match
        for i in range(start, len(text)):
            ch = text[i]
            while state and ch not in goto[state]:
                state = fail[state]
            state = goto[state].get(ch, 0)
            found = match[state]
            if found is not None:
                end = i + 1
                return state, StopMatch(end - len(found), end, found)
        return state, None


@functools.lru_cache(maxsize=16)  # up to 16 x max_stop_chars nodes
def stop_strings_for(strings: tuple[str, ...]) -> StopStrings:
    """The automaton of `strings`, shared by every request that stops on the same ones
    (an automaton is never modified once built)."""
    return StopStrings(strings)
