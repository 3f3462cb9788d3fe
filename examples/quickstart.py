"""Quickstart: a loomlm program with gen and select, run once, streamed and as a batch.

Runs on the built-in TinyStories 260K model, no download needed:

    python examples/quickstart.py
"""

from __future__ import annotations

import time
from typing import Any

import loomlm


@loomlm.function
def story(s, hero: str, place: str) -> None:
    s += f"Once upon a time, {hero} went to the {place}."
    s += loomlm.gen("plot", max_tokens=40, stop="\n")
    s += " The moral of the story is " + loomlm.select(
        "moral", ["to share", "to be kind", "to be brave", "to say sorry"]
    )
    s += ". " + loomlm.gen("ending", max_tokens=24, stop=".")


def main(backend: Any = None) -> None:
    engine = None
    if backend is None:
        from loomlm.runtime import Engine

        backend = engine = Engine()
    try:
        print("== one program, greedy")
        state = story.run(hero="a little dog", place="park", temperature=0, backend=backend)
        print(state.text())
        scores = state.get_meta_info("moral")["normalized_prompt_logprobs"]
        print(f"   [moral: {state['moral']!r}, scores {[round(x, 2) for x in scores]}]")

        print("\n== streamed, sampled")
        state = story.run(hero="Lily", place="sea", temperature=0.8, stream=True, backend=backend)
        for chunk in state.text_iter():
            print(chunk, end="", flush=True)
        print()

        print("\n== a batch of 32 programs at once")
        heroes = ["Tom", "Sue", "a cat", "a bird"]
        places = ["zoo", "farm", "lake", "hill", "town", "wood", "beach", "garden"]
        args = [{"hero": h, "place": p} for h in heroes for p in places]
        start = time.perf_counter()
        states = story.run_batch(args, temperature=0, backend=backend)
        seconds = time.perf_counter() - start
        print(states[5].text())
        morals = sorted({s["moral"] for s in states})
        print(f"   [{len(states)} programs in {seconds:.2f}s; morals chosen: {morals}]")
    finally:
        if engine is not None:
            engine.shutdown()


if __name__ == "__main__":
    main()
