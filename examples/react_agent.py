"""A ReAct-style agent: the model thinks, picks a Python tool, reads its result, and repeats
until it answers. The tool is chosen with select, so the agent never calls a tool that does
not exist; the argument is a constrained gen.

    python examples/react_agent.py
"""

from __future__ import annotations

from typing import Any

import loomlm

FACTS = {"lily": "Lily is a girl who is 5 years old.", "max": "Max is a dog who likes balls."}


def lookup(name: str) -> str:
    return FACTS.get(name.strip().lower(), f"Nothing is known about {name}.")


def add(expression: str) -> str:
    a, _, b = expression.partition("+")
    return str(int(a) + int(b))


TOOLS = {"lookup": (lookup, r"[A-Za-z]{1,12}"), "add": (add, r"[0-9]{1,3}\+[0-9]{1,3}")}

INSTRUCTIONS = (
    "Answer the question. Think, then use a tool: lookup[name] finds facts about someone, "
    "add[a+b] adds two numbers, finish[answer] gives the answer.\n"
)


@loomlm.function
def agent(s, question: str, max_steps: int = 3) -> list[tuple[str, str, str]]:
    s += INSTRUCTIONS + f"Question: {question}\n"
    trace = []
    for step in range(1, max_steps + 1):
        s += f"Thought {step}:" + loomlm.gen(f"thought{step}", max_tokens=24, stop="\n") + "\n"
        # The first step must look something up or compute: no answer without an observation.
        tools = ["lookup", "add"] if step == 1 else ["lookup", "add", "finish"]
        s += f"Action {step}: " + loomlm.select(f"tool{step}", tools)
        tool = s[f"tool{step}"]
        if tool == "finish":
            s += "[" + loomlm.gen("answer", max_tokens=16, stop="]") + "]\n"
            break
        func, argument_regex = TOOLS[tool]
        s += "[" + loomlm.gen(f"arg{step}", regex=argument_regex) + "]\n"
        observation = func(s[f"arg{step}"])  # a plain Python call, in the middle of the program
        trace.append((tool, s[f"arg{step}"], observation))
        s += f"Observation {step}: {observation}\n"
    return trace


def main(backend: Any = None) -> None:
    engine = None
    if backend is None:
        from loomlm.runtime import Engine

        backend = engine = Engine()
    try:
        questions = ["How old is Lily?", "What does Max like?", "What is 12+30?"]
        states = agent.run_batch(
            [{"question": q} for q in questions], temperature=0, backend=backend
        )
        for state in states:
            print(state.text())
            print(f"  [tool calls: {state.ret_value}]\n")
    finally:
        if engine is not None:
            engine.shutdown()


if __name__ == "__main__":
    main()
