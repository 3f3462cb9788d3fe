"""Each primitive on both backends: the in-process engine and `loomlm serve` over HTTP."""

from __future__ import annotations

import json
import re

import jsonschema
import loomlm
import pytest

from .helpers import choice_logprobs, greedy

PROMPT = "Once upon a time, there was a little girl named Lily."


def test_gen_equals_the_engine(backend, engine):
    @loomlm.function
    def story(s, prompt):
        s += prompt
        s += loomlm.gen("first", max_tokens=12)
        s += " Then"
        s += loomlm.gen("second", max_tokens=10, stop=".")

    state = story.run(prompt=PROMPT, temperature=0, backend=backend)
    first = greedy(engine, PROMPT, max_new_tokens=12)
    second = greedy(engine, PROMPT + first.text + " Then", max_new_tokens=10, stop=["."])
    assert state["first"] == first.text
    assert state["second"] == second.text
    assert state.text() == PROMPT + first.text + " Then" + second.text
    meta = state.get_meta_info("first")
    assert meta["prompt_tokens"] == first.prompt_tokens
    assert meta["completion_tokens"] == 12
    assert meta["finish_reason"] == {"type": "length", "length": 12}


def test_gen_sampling_parameters_reach_the_engine(backend, engine):
    @loomlm.function
    def prog(s):
        s += PROMPT
        s += loomlm.gen("min", max_tokens=20, min_tokens=20, stop_token_ids=[2], ignore_eos=True)
        s += loomlm.gen("two", max_tokens=6, n=2, temperature=0.9, top_p=0.9, top_k=20, min_p=0.05)
        s += loomlm.gen("pen", max_tokens=8, frequency_penalty=0.5, presence_penalty=0.5)
        s += loomlm.gen(
            "lp",
            max_tokens=5,
            return_logprob=True,
            top_logprobs_num=2,
            return_text_in_logprobs=True,
        )

    state = prog.run(temperature=0, backend=backend)
    assert state.get_meta_info("min")["completion_tokens"] == 20
    two = state["two"]
    assert isinstance(two, list) and len(two) == 2 and all(isinstance(t, str) for t in two)
    pen = greedy(
        engine,
        PROMPT + state["min"] + two[0],
        max_new_tokens=8,
        frequency_penalty=0.5,
        presence_penalty=0.5,
    )
    assert state["pen"] == pen.text
    meta = state.get_meta_info("lp")
    assert len(meta["output_token_logprobs"]) == 5
    assert all(len(row) == 2 for row in meta["output_top_logprobs"])


def test_regex_dtype_and_json_schema(backend):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
    }

    @loomlm.function
    def prog(s):
        s += "Lily is " + loomlm.gen_int("age", max_tokens=4) + " years old.\n"
        s += "Her cat is called " + loomlm.gen_string("cat", max_tokens=10) + ".\n"
        s += "Height: " + loomlm.gen("h", dtype=float, max_tokens=6) + "\n"
        s += "Happy: " + loomlm.gen("b", dtype=bool) + "\n"
        s += "Code: " + loomlm.gen("code", regex=r"[A-Z]{3}-[0-9]{2}") + "\n"
        s += "JSON: " + loomlm.gen("doc", json_schema=schema, max_tokens=160)

    state = prog.run(temperature=0, backend=backend)
    assert re.fullmatch(r"[-+]?[0-9]+", state["age"])
    # A string the token limit cut short has no closing quote yet.
    closed = state.get_meta_info("cat")["finish_reason"]["type"] == "stop"
    assert re.fullmatch(r'"[\w\d\s]*"' if closed else r'"[\w\d\s]*', state["cat"])
    assert re.fullmatch(r"[-+]?[0-9]*\.?[0-9]+", state["h"])
    assert state["b"] in ("True", "False")
    assert re.fullmatch(r"[A-Z]{3}-[0-9]{2}", state["code"])
    jsonschema.validate(json.loads(state["doc"]), schema)


METHODS = [
    loomlm.token_length_normalized,
    loomlm.greedy_token_selection,
    loomlm.unconditional_likelihood_normalized,
]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_select_scores_are_the_engines_logprobs(backend, engine, method):
    text = "Lily went to the park. She saw a big"
    choices = [" dog", " red ball", " tree", " cat that was sleeping"]

    @loomlm.function
    def prog(s):
        s += text
        s += loomlm.select("pick", choices=choices, choices_method=method)

    state = prog.run(backend=backend)
    meta = state.get_meta_info("pick")
    expected = [choice_logprobs(engine, text, c) for c in choices]
    for got, (cond, _) in zip(meta["input_token_logprobs"], expected):
        assert [e[0] for e in got] == pytest.approx(cond, abs=1e-4)
    means = [sum(c) / len(c) for c, _ in expected]
    assert meta["normalized_prompt_logprobs"] == pytest.approx(means, abs=1e-4)
    if method is loomlm.unconditional_likelihood_normalized:
        scores = [sum(a - b for a, b in zip(c, u)) / len(c) for c, u in expected]
        assert meta["normalized_unconditional_prompt_logprobs"] == pytest.approx(scores, abs=1e-4)
        best = max(range(len(choices)), key=lambda i: scores[i])
    elif method is loomlm.greedy_token_selection:
        rows = [c + [sum(c) / len(c)] * (6 - len(c)) for c, _ in expected]
        alive = list(range(len(choices)))
        for col in range(6):
            top = max(rows[i][col] for i in alive)
            alive = [i for i in alive if rows[i][col] == pytest.approx(top, abs=1e-6)]
            if len(alive) == 1:
                break
        best = alive[0]
    else:
        best = max(range(len(choices)), key=lambda i: means[i])
    assert state["pick"] == choices[best]
    assert state.text() == text + choices[best]


def test_methods_disagree_where_they_should(backend):
    """A sanity check that the three methods are different rules, not one rule three times:
    across these prompts at least two methods pick differently at least once."""
    picks = set()
    for text in ("Tom had a", "The sun was", "Lily liked to eat"):

        @loomlm.function
        def prog(s, method, text=text):
            s += text + loomlm.select(
                "x", [" big", " very", " cat", " happy and kind"], choices_method=method
            )

        picks.add(tuple(prog.run(method=m, backend=backend)["x"] for m in METHODS))
    assert any(len(set(p)) > 1 for p in picks)


def test_gen_with_choices_is_a_select(backend):
    @loomlm.function
    def prog(s):
        s += "The sky is" + loomlm.gen("c", choices=[" blue", " green"])

    state = prog.run(backend=backend)
    assert state["c"] in (" blue", " green")
    assert "normalized_prompt_logprobs" in state.get_meta_info("c")


def test_roles_and_messages(backend):
    @loomlm.function
    def chat(s):
        s += loomlm.system("You tell stories.")
        s += loomlm.user("Tell me about a cat.")
        s += loomlm.assistant(loomlm.gen("a1", max_tokens=8))
        with s.user():
            s += "And a dog?"
        s += loomlm.assistant_begin()
        s += loomlm.gen("a2", max_tokens=8)
        s += loomlm.assistant_end()
        s += loomlm.user_begin() + "Thanks" + loomlm.user_end()

    state = chat.run(temperature=0, backend=backend)
    a1, a2 = state["a1"], state["a2"]
    assert state.text() == (
        f"SYSTEM:You tell stories.\nUSER:Tell me about a cat.\nASSISTANT:{a1}\n"
        f"USER:And a dog?\nASSISTANT:{a2}\nUSER:Thanks\n"
    )
    assert state.messages() == [
        {"role": "system", "content": "You tell stories."},
        {"role": "user", "content": "Tell me about a cat."},
        {"role": "assistant", "content": a1.lstrip()},
        {"role": "user", "content": "And a dog?"},
        {"role": "assistant", "content": a2.lstrip()},
        {"role": "user", "content": "Thanks"},
    ]


def test_variables_fstrings_and_var_scope(backend):
    @loomlm.function
    def prog(s, name):
        s += f"{name} had a " + loomlm.gen("thing", max_tokens=4, stop=[" ", "."])
        s += f". The {s['thing']} was"
        with s.var_scope("tail"):
            s += " very" + loomlm.gen(max_tokens=3)
        s["mine"] = 42

    state = prog.run(name="Lily", temperature=0, backend=backend)
    text = state.text()
    assert text.startswith(f"Lily had a {state['thing']}. The {state['thing']} was very")
    assert text.endswith(state["tail"]) and state["tail"].startswith(" very")
    assert state["mine"] == 42 and "mine" in state and "nope" not in state


def test_one_program_same_greedy_result_on_both_backends(engine, endpoint):
    @loomlm.function
    def prog(s, hero):
        s += loomlm.user(f"Tell me about {hero}.")
        s += loomlm.assistant(loomlm.gen("story", max_tokens=24))
        s += "Mood: " + loomlm.select("mood", [" happy", " sad", " angry"])
        forks = s.fork(2)
        forks += lambda i: f" Part {i}:" + loomlm.gen("part", max_tokens=8)
        forks.join("concate_and_append")
        s += " Age: " + loomlm.gen_int("age", max_tokens=3)

    here = prog.run(hero="a dog", temperature=0, backend=engine)
    there = prog.run(hero="a dog", temperature=0, backend=endpoint)
    assert here.text() == there.text()
    assert [here[k] for k in ("story", "mood", "age")] == [
        there[k] for k in ("story", "mood", "age")
    ]
