"""Batched evaluation with run_batch: a few-shot multiple-choice test, scored by accuracy.

All questions share the few-shot examples; run_batch computes them once and runs the
questions concurrently, with a progress bar.

    python examples/batch_eval.py
"""

from __future__ import annotations

from typing import Any

import loomlm

SHOTS = [
    ("Lily was hungry, so she ate", ["a sandwich", "a car", "the sky"], 0),
    ("It was cold, so Tom put on his", ["hat", "pond", "song"], 0),
    ("The dog wagged its", ["tail", "cup", "window"], 0),
]
QUESTIONS = [
    ("The bird flew up into the", ["sky", "spoon", "shoe"], 0),
    ("Sue was tired, so she went to", ["bed", "blue", "apple"], 0),
    ("The cat drank some", ["milk", "chair", "rain"], 0),
    ("Ben kicked the", ["ball", "cloud", "music"], 0),
    ("Mom baked a big", ["cake", "tree", "road"], 0),
    ("The sun was hot, so they went to the", ["beach", "fork", "night"], 0),
    ("Tim wanted to read a", ["book", "dog", "rock"], 0),
    ("The fish swam in the", ["water", "bread", "fire"], 0),
]


def _few_shot() -> str:
    return "".join(f"{q} {choices[a]}.\n" for q, choices, a in SHOTS)


@loomlm.function
def answer(s, question: str, choices: list[str]) -> None:
    s += _few_shot()
    s += question + " " + loomlm.select("choice", choices)


def main(backend: Any = None) -> None:
    engine = None
    if backend is None:
        from loomlm.runtime import Engine

        backend = engine = Engine()
    try:
        states = answer.run_batch(
            [{"question": q, "choices": c} for q, c, _ in QUESTIONS],
            backend=backend,
            progress_bar=True,
        )
        correct = sum(s["choice"] == c[a] for s, (_, c, a) in zip(states, QUESTIONS))
        for state, (q, _, _) in zip(states, QUESTIONS):
            print(f"{q} -> {state['choice']}")
        print(f"accuracy: {correct}/{len(QUESTIONS)} = {correct / len(QUESTIONS):.0%}")
    finally:
        if engine is not None:
            engine.shutdown()


if __name__ == "__main__":
    main()
