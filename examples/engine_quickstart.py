"""The engine alone (no language): the engine on the built-in TinyStories 260K model, no download needed.

python examples/engine_quickstart.py
"""

from __future__ import annotations

import time

from loomlm.runtime import Engine, SamplingParams


def main() -> None:
    with Engine() as engine:
        print("== greedy")
        out = engine.generate("Once upon a time", SamplingParams(max_new_tokens=48, temperature=0))
        print(f"Once upon a time{out.text}")
        print(f"   [{out.completion_tokens} tokens, finish: {out.finish_reason.to_dict()}]")

        print("\n== streaming, sampled (seed 42)")
        print("One day", end="")
        for chunk in engine.stream(
            "One day", {"max_new_tokens": 60, "temperature": 0.8, "seed": 42}
        ):
            print(chunk.text, end="", flush=True)
        print()

        print("\n== a batch of 64 stories at once (continuous batching)")
        prompts = [
            f"{name} went to the {place}"
            for name in ("Tom", "Lily", "Sue", "Ben")
            for place in (
                "park",
                "shop",
                "sea",
                "zoo",
                "farm",
                "lake",
                "hill",
                "town",
                "wood",
                "beach",
                "garden",
                "river",
                "school",
                "castle",
                "cave",
                "city",
            )
        ]
        start = time.perf_counter()
        outs = engine.generate(prompts, {"max_new_tokens": 64, "temperature": 0.7, "seed": 1})
        seconds = time.perf_counter() - start
        tokens = sum(o.completion_tokens for o in outs)
        print(f"{prompts[0]}{outs[0].text}")
        print(
            f"   [{len(outs)} requests, {tokens} tokens in {seconds:.2f}s = {tokens / seconds:.0f} tok/s]"
        )
        print("\n", engine.stats())


if __name__ == "__main__":
    main()
