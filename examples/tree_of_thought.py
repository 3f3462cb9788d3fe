"""Tree of thought with fork: plan two ways, continue each plan two ways, pick the best leaf.

The branches of a fork run at the same time, and the engine computes the text they share
once. The shape follows the SGLang paper's tree-of-thought benchmark.

    python examples/tree_of_thought.py
"""

from __future__ import annotations

from typing import Any

import loomlm

QUESTION = "Lily lost her red ball in the garden. How can she find it?"


@loomlm.function
def tree_of_thought(s, question: str, width: int = 2) -> list[dict[str, str]]:
    s += loomlm.user(question)
    s += loomlm.assistant_begin()
    plans = s.fork(width)
    plans += lambda i: f"Plan {i + 1}:" + loomlm.gen("plan", max_tokens=24, stop="\n")
    leaves = []
    for plan in plans:
        steps = plan.fork(width)
        steps += lambda j: f"\nStep {j + 1}:" + loomlm.gen("step", max_tokens=24, stop="\n")
        steps += "\nIs this good? " + loomlm.select("verdict", ["yes", "no"])
        for step in steps:
            leaves.append(
                {
                    "plan": plan["plan"],
                    "step": step["step"],
                    "verdict": step["verdict"],
                    "score": step.get_meta_info("verdict")["normalized_prompt_logprobs"][0],
                }
            )
    best = max(leaves, key=lambda leaf: leaf["score"])
    s += f"Plan:{best['plan']}\nStep:{best['step']}"
    s += loomlm.assistant_end()
    return leaves


def main(backend: Any = None) -> None:
    engine = None
    if backend is None:
        from loomlm.runtime import Engine

        backend = engine = Engine()
    try:
        state = tree_of_thought.run(question=QUESTION, temperature=0.7, backend=backend)
        for leaf in state.ret_value:
            print(
                f"plan:{leaf['plan']}\n  step:{leaf['step']}\n  good? {leaf['verdict']} "
                f"(score {leaf['score']:.2f})"
            )
        print("\n== chosen\n" + state.messages()[-1]["content"])
    finally:
        if engine is not None:
            engine.shutdown()


if __name__ == "__main__":
    main()
