"""Fuzzing every endpoint's fields: whatever a client sends, the answer is never a 5xx and
never a hang, the server serves a canary request after each example, and the KV pool is
whole at the end.

Examples are derandomized (the same in every CI run); set LOOMLM_FUZZ_EXAMPLES to run more,
randomly. The status counts are printed at the end (`pytest -s`).
"""

from __future__ import annotations

import json
import os
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..helpers import assert_pool_whole

PROMPT = "Once upon a time"
EXAMPLES = int(os.environ.get("LOOMLM_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="LOOMLM_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=list(HealthCheck),
)
STATUS: Counter = Counter()

# Any JSON value, biased towards the edges: huge and negative numbers, non-finite floats
# (sent as NaN / Infinity tokens), long and empty strings, nesting.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.integers(-3, 600)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["", "a" * 5000, "\x00", "\ud800"[:0] + "\U0001f600", "[", "{}", "null"])
)
anything = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)
token_ids = st.lists(st.integers(0, 511), min_size=1, max_size=12)
stops = st.lists(st.text(alphabet="abcde .\n", min_size=1, max_size=4), max_size=3)
constraint = st.sampled_from(
    [
        ("regex", "[0-9]{1,3}"), ("regex", "(a|b)+"), ("regex", "["), ("regex", "(" * 600),
        ("regex", "a{0,100000}"), ("json_schema", {"type": "integer"}),
        ("json_schema", {"type": "object", "properties": {"a": {"type": "string"}}}),
        ("json_schema", {"$ref": "http://127.0.0.1:9/x"}), ("json_schema", {"$ref": "#/nope"}),
        ("json_schema", "{"), ("json_schema", {"type": "frob"}),
        ("json_schema", {"type": "string", "pattern": "^\\p{Lu}+$"}),
        ("json_schema", {"enum": []}), ("json_schema", {"oneOf": [{"not": {}}]}),
        ("ebnf", 'start: "a"+'), ("ebnf", "start: x"), ("ebnf", 'start: "a" start'),
        ("ebnf", "%import foo"), ("choices", ["yes", "no"]), ("choices", []),
    ]
)  # fmt: skip

# Each endpoint's fields, with values of the right kind that probe the edges (limits,
# empty, zero); `bodies` then mixes such bodies with ones where a field, or every field,
# is any JSON value at all.
SAMPLING = {
    "max_new_tokens": st.integers(0, 24),
    "min_new_tokens": st.integers(0, 4),
    "temperature": st.sampled_from([0, 0.7, 1.0, 1e-7, 2.0]),
    "top_p": st.sampled_from([1.0, 0.5, 1e-9]),
    "top_k": st.sampled_from([-1, 1, 5, 100000]),
    "min_p": st.sampled_from([0.0, 0.2, 1.0]),
    "frequency_penalty": st.sampled_from([0.0, 2.0, -2.0]),
    "presence_penalty": st.sampled_from([0.0, 1.5]),
    "repetition_penalty": st.sampled_from([1.0, 1.3, 2.0]),
    "stop": stops,
    "stop_token_ids": token_ids,
    "ignore_eos": st.booleans(),
    "skip_special_tokens": st.booleans(),
    "no_stop_trim": st.booleans(),
    "n": st.integers(1, 4) | st.just(128),
    "seed": st.integers(0, 2**64 - 1),
}


def bodies(valid: dict, required: tuple[str, ...] = ()) -> st.SearchStrategy:
    """Bodies of `valid`'s fields: mostly well formed, then one field anything, then all."""

    def build(fields: dict) -> st.SearchStrategy:
        must = {k: v for k, v in fields.items() if k in required}
        return st.fixed_dictionaries(
            must, optional={k: v for k, v in fields.items() if k not in required}
        )

    def one_wild(key: str) -> st.SearchStrategy:
        return build({**valid, key: anything})

    wild_field = st.sampled_from(sorted(valid)).flatmap(one_wild)
    everything_wild = build({k: anything for k in valid})
    extra = st.dictionaries(
        st.sampled_from(["bogus", "sampling_seed", "model"]), anything, max_size=1
    )
    return st.one_of(build(valid), build(valid), wild_field, everything_wild, extra)


def sampling_params() -> st.SearchStrategy:
    def add_constraint(params: dict, pick: tuple) -> dict:
        return {**params, pick[0]: pick[1]}

    plain = bodies(SAMPLING)
    return plain | st.builds(
        add_constraint, st.fixed_dictionaries({}, optional=SAMPLING), constraint
    )


generate_bodies = bodies(
    {
        "text": st.just(PROMPT) | st.lists(st.just(PROMPT), min_size=1, max_size=3),
        "input_ids": token_ids,
        "sampling_params": sampling_params() | st.lists(sampling_params(), max_size=2),
        "return_logprob": st.booleans(),
        "logprob_start_len": st.integers(-1, 6),
        "top_logprobs_num": st.integers(0, 21) | st.just(600),
        "return_text_in_logprobs": st.booleans(),
        "rid": st.text(min_size=1, max_size=8),
        "stream": st.booleans(),
        "image_data": st.none() | st.just("aGk="),
    }
)
OPENAI = {
    "model": st.text(max_size=5),
    "max_tokens": st.integers(0, 24),
    "n": st.integers(1, 4) | st.just(129),
    "stop": stops,
    "temperature": st.sampled_from([0, 0.5, 2.0]),
    "top_p": st.sampled_from([1.0, 0.3]),
    "seed": st.integers(0, 1000),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "logit_bias": st.none() | st.just({"5": 1.0}),
    "response_format": st.sampled_from(
        [
            {"type": "json_object"},
            {"type": "text"},
            {"type": "json_schema"},
            {"type": "json_schema", "json_schema": {"schema": {"$ref": "file:///etc/passwd"}}},
            {"type": "json_schema", "json_schema": {"schema": {"type": "integer"}}},
        ]
    ),  # fmt: skip
    "skip_special_tokens": st.booleans(),
    "ignore_eos": st.booleans(),
    "min_tokens": st.integers(0, 3),
    "regex": st.sampled_from(["[a-z]{1,4}", "("]),
}
completion_bodies = bodies(
    {
        **OPENAI,
        "prompt": st.just(PROMPT) | token_ids | st.lists(st.just(PROMPT), max_size=2),
        "echo": st.booleans(),
        "logprobs": st.integers(0, 21),
    },
    required=("prompt",),
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "bogus"]),
     "content": st.text(max_size=20) | st.lists(st.fixed_dictionaries(
         {"type": st.sampled_from(["text", "image_url"]), "text": st.text(max_size=8)}), max_size=2)}
)  # fmt: skip
chat_bodies = bodies(
    {
        **OPENAI,
        "messages": st.lists(message, min_size=1, max_size=3),
        "logprobs": st.booleans(),
        "top_logprobs": st.integers(0, 21),
        "tools": st.none() | st.just([{"type": "function", "function": {"name": "f"}}]),
        "tool_choice": st.sampled_from(["none", "auto"]),
        "chat_template_kwargs": st.dictionaries(
            st.sampled_from(["tokenize", "x", "chat_template", "messages"]), anything, max_size=2
        ),
        "add_generation_prompt": st.booleans(),
    },
    required=("messages",),
)
tokenize_bodies = bodies(
    {"prompt": st.just(PROMPT) | st.lists(st.text(max_size=30), max_size=3), "add_special_tokens": st.booleans()}
)  # fmt: skip
detokenize_bodies = bodies(
    {"tokens": token_ids | st.lists(token_ids, max_size=2), "skip_special_tokens": st.booleans()}
)
abort_bodies = bodies({"rid": st.text(max_size=8), "abort_all": st.booleans()})


def send(http: httpx.Client, path: str, body: object) -> None:
    """Post `body` (streams read to the end) and check the answer is no 5xx."""
    content = json.dumps(body, allow_nan=True)
    with http.stream("POST", path, content=content) as r:
        text = r.read().decode(errors="replace")
    STATUS[r.status_code] += 1
    assert r.status_code < 500, (path, content[:500], text[:500])
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        assert text.rstrip().endswith("data: [DONE]"), text[-300:]
        for line in text.splitlines():
            if line.startswith("data: {") and '"error"' in line:
                error = json.loads(line[6:])["error"]
                assert error["code"] < 500, (path, content[:500], line[:500])


def check_canary(http: httpx.Client) -> None:
    r = http.post("/generate", json={"text": PROMPT, "sampling_params": {"max_new_tokens": 2}})
    assert r.status_code == 200 and r.json()["meta_info"]["completion_tokens"] == 2


@pytest.fixture(scope="module")
def fuzz_http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
    print(f"\nfuzz statuses: {dict(sorted(STATUS.items()))}")


@pytest.mark.parametrize(
    "path,bodies",
    [
        ("/generate", generate_bodies),
        ("/v1/completions", completion_bodies),
        ("/v1/chat/completions", chat_bodies),
        ("/tokenize", tokenize_bodies),
        ("/detokenize", detokenize_bodies),
        ("/abort_request", abort_bodies),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_no_body_gets_a_5xx_or_hangs(fuzz_http, path, bodies):
    @FUZZ
    @given(body=bodies)
    def run(body: dict) -> None:
        send(fuzz_http, path, body)
        check_canary(fuzz_http)

    run()


def test_the_pool_is_whole_after_the_fuzzing(fuzz_http, engine):
    assert_pool_whole(engine)
