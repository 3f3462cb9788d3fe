"""The SGLang paper's program workloads, sized for a 512-token context.

Each workload is a program and the arguments of its runs. The texts are made up in the style
of the default model's training data (short children's stories), so that the programs read
naturally on it; the speed of a run does not depend on what the model writes.
"""

from __future__ import annotations

import random
from typing import Any, NamedTuple

import loomlm

NAMES = ["Lily", "Tom", "Sue", "Ben", "Max", "Anna", "Sam", "Mia", "Tim", "Zoe", "Jack", "Amy"]
THINGS = ["ball", "cat", "cake", "tree", "boat", "kite", "book", "hat", "dog", "car", "toy", "cup"]
PLACES = ["park", "zoo", "farm", "lake", "hill", "town", "wood", "beach", "garden", "shop"]


class Workload(NamedTuple):
    name: str
    program: loomlm.Function
    arguments: list[dict[str, Any]]


def _sentence(rng: random.Random) -> tuple[str, list[str], int]:
    name, thing, place = rng.choice(NAMES), rng.choice(THINGS), rng.choice(PLACES)
    endings = [f"played with the {thing}", f"went to the {place}", "ate a cake", "went to sleep"]
    rng.shuffle(endings)
    return f"{name} took the {thing} to the {place}, and then", endings, rng.randrange(4)


# -- few-shot multiple choice (HellaSwag-style): select over 4 endings -----------------------
def few_shot(count: int, rng: random.Random) -> Workload:
    shots = "".join(
        f"Question: {q}\nAnswer: {ends[a]}\n\n" for q, ends, a in (_sentence(rng) for _ in range(8))
    )

    @loomlm.function
    def few_shot_select(s: loomlm.ProgramState, question: str, endings: list[str]) -> None:
        s += shots
        s += f"Question: {question}\nAnswer: " + loomlm.select("answer", endings)

    args = [{"question": q, "endings": e} for q, e, _ in (_sentence(rng) for _ in range(count))]
    return Workload("few-shot select", few_shot_select, args)


# -- JSON extraction with a schema -----------------------------------------------------------
CHARACTER = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "thing": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 1, "maximum": 12},
    },
    "required": ["name", "thing", "age"],
}


def json_extraction(count: int, rng: random.Random) -> Workload:
    @loomlm.function
    def extract(s: loomlm.ProgramState, story: str) -> None:
        s += "Read the story. Write the main character as a JSON record.\n"
        s += f"Story: {story}\nRecord: " + loomlm.gen(
            "record", json_schema=CHARACTER, max_tokens=48
        )

    args = [
        {
            "story": f"{rng.choice(NAMES)} was {rng.randrange(2, 9)} years old and had a "
            f"{rng.choice(THINGS)}. One day they went to the {rng.choice(PLACES)}."
        }
        for _ in range(count)
    ]
    return Workload("JSON extraction", extract, args)


# -- tree of thought: nested forks (plan -> step -> verdict) ---------------------------------
def tree_of_thought(count: int, rng: random.Random) -> Workload:
    @loomlm.function
    def tree(s: loomlm.ProgramState, question: str) -> None:
        s += loomlm.user(question)
        s += loomlm.assistant_begin()
        plans = s.fork(2)
        plans += lambda i: f"Plan {i + 1}:" + loomlm.gen("plan", max_tokens=16, ignore_eos=True)
        # Fork every plan before joining any, so that all the steps run at once.
        steps = [plan.fork(2) for plan in plans]
        for group in steps:
            group += lambda j: (
                f"\nStep {j + 1}:" + loomlm.gen("step", max_tokens=16, ignore_eos=True)
            )
            group += "\nGood? " + loomlm.select("verdict", ["yes", "no"])
        for group in steps:
            group.join()
        plans.join()
        s += "\nSo:" + loomlm.gen("final", max_tokens=16, ignore_eos=True)
        s += loomlm.assistant_end()

    args = [
        {
            "question": f"{rng.choice(NAMES)} lost the {rng.choice(THINGS)} at the "
            f"{rng.choice(PLACES)}. What should they do?"
        }
        for _ in range(count)
    ]
    return Workload("tree of thought", tree, args)


# -- multi-turn chat -------------------------------------------------------------------------
def multi_turn_chat(count: int, rng: random.Random) -> Workload:
    system = "You are a kind storyteller. You answer every question with a short, happy story."

    @loomlm.function
    def chat(s: loomlm.ProgramState, turns: list[str]) -> None:
        s += loomlm.system(system)
        for i, turn in enumerate(turns):
            s += loomlm.user(turn)
            s += loomlm.assistant(loomlm.gen(f"answer{i}", max_tokens=16, ignore_eos=True))

    args = [
        {
            "turns": [
                f"Tell me about {rng.choice(NAMES)} and the {rng.choice(THINGS)}." for _ in range(4)
            ]
        }
        for _ in range(count)
    ]
    return Workload("multi-turn chat", chat, args)


# -- ReAct-style agent: think, pick a tool, call it, read the observation --------------------
FACTS = {
    n.lower(): f"{n} is {i + 3} years old and likes the {t}."
    for i, (n, t) in enumerate(zip(NAMES, THINGS))
}

REACT_INSTRUCTIONS = (
    "Answer the question with the tools. lookup[name] tells you about someone. "
    "finish[answer] ends.\n"
    "Question: What does Lily like?\nThought: I should look up Lily.\nAction: lookup[Lily]\n"
    f"Observation: {FACTS['lily']}\nThought: Lily likes the ball.\nAction: finish[the ball]\n\n"
)


def react_agent(count: int, rng: random.Random) -> Workload:
    @loomlm.function
    def react(s: loomlm.ProgramState, question: str) -> None:
        s += REACT_INSTRUCTIONS + f"Question: {question}\n"
        for step in range(3):
            s += "Thought:" + loomlm.gen(f"thought{step}", max_tokens=12, stop="\n") + "\n"
            s += "Action: " + loomlm.select(f"tool{step}", ["lookup", "finish"])
            s += "[" + loomlm.gen(f"arg{step}", regex=r"[A-Z][a-z]{1,8}") + "]\n"
            if s[f"tool{step}"] == "finish":
                break
            s += f"Observation: {FACTS.get(s[f'arg{step}'].lower(), 'Nothing found.')}\n"

    args = [{"question": f"How old is {rng.choice(NAMES)}?"} for _ in range(count)]
    return Workload("ReAct agent", react, args)


ALL = {
    "few_shot": few_shot,
    "json": json_extraction,
    "tree": tree_of_thought,
    "chat": multi_turn_chat,
    "react": react_agent,
}
