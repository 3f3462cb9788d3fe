"""Constrained generation through the engine, on the built-in model at temperature 1.0."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import lark
import pytest
from loomlm.runtime import Engine, SamplingParams

from ..helpers import assert_pool_whole

SEEDS = 50
PROMPT = "Once upon a time"
REGEXES = {
    "int": r"[-+]?[0-9]{1,6}",
    "float": r"-?[0-9]{1,4}\.[0-9]{1,3}",
    "date": r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])",
    "email": r"[a-z0-9._]{1,20}@[a-z0-9]{1,12}\.(com|org|net)",
    "ipv4": r"((25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])",
    "phone": r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}",
}
ARITH = r"""
start: expr
expr: term (("+" | "-") term)*
term: NUMBER | "(" expr ")"
NUMBER: /[0-9]{1,3}/
"""


@pytest.fixture(scope="module")
def engine():
    with Engine() as e:
        yield e


def sample(engine, params: dict, seeds: int = SEEDS, max_new_tokens: int = 64, prompt=PROMPT):
    return engine.generate(
        [prompt] * seeds,
        [
            {**params, "temperature": 1.0, "max_new_tokens": max_new_tokens, "seed": s}
            for s in range(seeds)
        ],
    )


@pytest.mark.parametrize("name", sorted(REGEXES))
def test_every_sample_fully_matches_its_regex(engine, name):
    outs = sample(engine, {"regex": REGEXES[name]})
    for o in outs:
        assert re.fullmatch(REGEXES[name], o.text), (name, o.text)
        assert o.finish_reason.type == "stop", (name, o.text, o.finish_reason)
    assert len({o.text for o in outs}) > 5, "samples differ across seeds"


def test_choices_pick_one_of_them(engine):
    choices = ["red", "green", "blue cheese", "42"]
    outs = sample(engine, {"choices": choices}, prompt="Lily liked the colour")
    assert {o.text for o in outs} <= set(choices)
    assert len({o.text for o in outs}) > 1


def test_ebnf_grammar_output_parses(engine):
    parser = lark.Lark(ARITH)
    outs = sample(engine, {"ebnf": ARITH}, max_new_tokens=48)
    stopped = [o for o in outs if o.finish_reason.type == "stop"]
    assert len(stopped) > SEEDS // 2
    for o in stopped:
        parser.parse(o.text)
    for o in outs:  # a grammar output cut by max_new_tokens is still a prefix of one
        assert re.fullmatch(r"[0-9+\-()]*", o.text), o.text


def test_constrained_requests_batch_with_free_ones_and_return_every_slot(engine):
    free = SamplingParams(temperature=0, max_new_tokens=12)
    alone = engine.generate(PROMPT, free)
    mixed = engine.generate(
        [PROMPT, PROMPT, PROMPT],
        [free, {"regex": REGEXES["date"], "temperature": 0}, {"choices": ["yes", "no"]}],
    )
    assert mixed[0].output_ids == alone.output_ids, "constraints of others leave a row alone"
    assert re.fullmatch(REGEXES["date"], mixed[1].text)
    assert mixed[2].text in ("yes", "no")
    assert_pool_whole(engine)


@pytest.mark.parametrize(
    "params, field",
    [
        ({"regex": "(unclosed"}, "regex"),
        ({"json_schema": {"type": "object", "properties": {"a": {"type": 7}}}}, "json_schema"),
        ({"json_schema": "{not json"}, "json_schema"),
        ({"ebnf": "start: missing_rule"}, "ebnf"),
        ({"regex": "a", "json_schema": {"type": "string"}}, "regex, json_schema"),
        ({"choices": []}, "choices"),
    ],
)
def test_invalid_constraints_are_refused_and_the_engine_serves_on(engine, params, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        engine.generate(PROMPT, {**params, "max_new_tokens": 4})
    ok = engine.generate(PROMPT, {"regex": "[0-9]{2}", "max_new_tokens": 4})
    assert re.fullmatch("[0-9]{2}", ok.text)


def test_constraints_need_a_tokenizer():
    with Engine(skip_tokenizer_init=True) as e:
        with pytest.raises(ValueError, match="regex: constrained decoding needs a tokenizer"):
            e.generate(input_ids=[1, 2, 3], sampling_params={"regex": "a"})


def test_bad_engine_options_are_value_errors():
    with pytest.raises(ValueError, match="grammar_backend"):
        Engine(grammar_backend="nope")


def test_outlines_backend_serves_regexes():
    with Engine(grammar_backend="outlines") as e:
        outs = sample(e, {"regex": REGEXES["phone"]}, seeds=8)
        assert all(re.fullmatch(REGEXES["phone"], o.text) for o in outs)


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "kind": {"enum": ["cat", "dog", "bird"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 30},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    },
    "required": ["name", "kind", "age", "tags"],
}


def test_jump_forward_skips_forced_text_and_keeps_greedy_output():
    """Forced text (keys, punctuation) is appended without sampling; greedy outputs are the
    same with jump-forward on and off where the model would pick the canonical tokens."""
    outs = {}
    for off in (False, True):
        with Engine(disable_jump_forward=off) as e:
            before = e.stats()
            o = e.generate(
                [PROMPT, "One day"],
                [{"json_schema": SCHEMA, "temperature": 0, "max_new_tokens": 128}] * 2,
            )
            after = e.stats()
            outs[off] = (
                o,
                after["generated_tokens"] - before["generated_tokens"],
                after["jump_forward_tokens"],
            )
            assert_pool_whole(e)
    (on_out, on_sampled, on_jumped), (off_out, off_sampled, off_jumped) = outs[False], outs[True]
    assert off_jumped == 0 and on_jumped > 0
    for a, b in zip(on_out, off_out):
        assert a.text == b.text
        json.loads(a.text)
    total = sum(len(o.output_ids) for o in on_out)
    assert on_sampled + on_jumped == total
    assert on_sampled < off_sampled, "fewer tokens sampled (forward passes) with jump-forward"


REAL_SCHEMAS = json.loads((Path(__file__).parent / "data" / "jsonschemabench_30.json").read_text())


def test_every_sample_validates_against_real_world_schemas(engine):
    """30 JSONSchemaBench schemas x 50 seeds at temperature 1.0: every document validates
    and ends with `stop` (data/SOURCE.md says how they were chosen)."""
    assert len(REAL_SCHEMAS) >= 30
    prompts, params, schemas = [], [], []
    for name, schema in REAL_SCHEMAS.items():
        for seed in range(SEEDS):
            prompts.append(PROMPT)
            params.append(
                {"json_schema": schema, "temperature": 1.0, "max_new_tokens": 512, "seed": seed}
            )
            schemas.append(name)
    outs = engine.generate(prompts, params)
    for name, o in zip(schemas, outs):
        assert o.finish_reason.type == "stop", (name, o.finish_reason, o.text[-80:])
        jsonschema.validate(json.loads(o.text), REAL_SCHEMAS[name])
    assert_pool_whole(engine)


def test_preempted_constrained_requests_resume_their_matchers():
    """A pool too small for the batch preempts requests mid-document; their matchers and
    forced tokens survive recomputation, and greedy outputs equal a roomy run's."""
    prompts = [f"{PROMPT} {w}" for w in ("Tom", "Lily", "the dog", "a cat", "Ben", "Sue")]
    params = {"json_schema": SCHEMA, "temperature": 0, "max_new_tokens": 96}
    with Engine() as roomy:
        want = [o.text for o in roomy.generate(prompts, params)]
    with Engine(max_total_tokens=160, chunked_prefill_size=16) as tight:
        got = tight.generate(prompts, params)
        assert tight.stats()["num_preemptions"] > 0
        assert_pool_whole(tight)
    assert [o.text for o in got] == want
    for o in got:
        json.loads(o.text)
