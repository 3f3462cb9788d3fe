"""The OpenAI endpoints' field policy: OpenAI's own fields accepted (implemented or without
effect), vLLM's and SGLang's extensions with their meaning, unknown fields ignored with a
warning (refused under --strict-fields), unimplemented ones refused when they ask for
something."""

from __future__ import annotations

import json
import logging
import re

import httpx
import openai
import pytest

from .conftest import CHAT_TEMPLATE
from .live_server import LiveServer

MODEL = "tinystories-260k"
PROMPT = "Once upon a time"
USER = [{"role": "user", "content": "Tell a story."}]


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_openais_documented_fields_are_accepted(client):
    plain = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=8, temperature=0)
    given = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        max_tokens=8,
        temperature=0,
        reasoning_effort="low",
        prompt_cache_key="story-1",
        verbosity="low",
        safety_identifier="user-42",
        modalities=["text"],
        prediction={"type": "content", "content": "Once"},
        web_search_options={},
        metadata={"k": "v"},
        store=False,
        service_tier="auto",
        user="someone",
        parallel_tool_calls=True,
    )
    assert given.choices[0].message.content == plain.choices[0].message.content
    c = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, user="u", best_of=1, suffix=""
    )
    assert c.choices[0].text


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_unknown_fields_are_ignored_with_a_warning(server):
    logger, seen = logging.getLogger("loomlm.server"), Collect()
    logger.addHandler(seen)
    try:
        r = httpx.post(
            f"{server.url}/v1/completions",
            json={"prompt": PROMPT, "max_tokens": 2, "frobnicate_xyz": 1},
            timeout=30,
        )
    finally:
        logger.removeHandler(seen)
    assert r.status_code == 200
    assert any("frobnicate_xyz" in m for m in seen.messages), seen.messages


def test_strict_fields_refuses_unknown_ones(engine):
    with LiveServer(engine, strict_fields=True, chat_template=CHAT_TEMPLATE) as s:
        r = httpx.post(
            f"{s.url}/v1/chat/completions",
            json={"messages": USER, "max_tokens": 2, "frobnicate_xyz": 1},
            timeout=30,
        )
        assert r.status_code == 400 and "frobnicate_xyz" in r.json()["error"]["message"]
        ok = httpx.post(
            f"{s.url}/v1/chat/completions",
            json={"messages": USER, "max_tokens": 2, "reasoning_effort": "low"},
            timeout=30,
        )
        assert ok.status_code == 200


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("use_beam_search", True),
        ("allowed_token_ids", [1, 2]),
        ("audio", {"voice": "alloy", "format": "mp3"}),
        ("modalities", ["text", "audio"]),
        ("lora_path", "adapter"),
        ("chat_template", "{{ messages }}"),
    ],
)
def test_unimplemented_fields_that_ask_for_something_are_refused(http, field, value):
    r = http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2, field: value})
    assert r.status_code == 400 and field in r.json()["error"]["message"]


def test_logit_bias_forces_and_bans_tokens(client, engine):
    token = engine.tokenizer.encode(" dog", add_special_tokens=False)[-1]
    forced = client.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=5,
        temperature=0,
        logit_bias={str(token): 100},
        extra_body={"ignore_eos": True},
    )
    assert forced.choices[0].text == engine.tokenizer.decode([token] * 5)
    plain = engine.generate(PROMPT, {"max_new_tokens": 6, "temperature": 0})
    banned_id = plain.output_ids[0]
    banned = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logit_bias={str(banned_id): -100}
    )
    direct = engine.generate(
        PROMPT, {"max_new_tokens": 6, "temperature": 0, "logit_bias": {banned_id: -100}}
    )
    assert banned.choices[0].text == direct.text != plain.text
    assert banned_id not in direct.output_ids
    for bad in ({"5": 101}, {str(engine.model_config.vocab_size): 1}, {"x": 1}):
        with pytest.raises(openai.BadRequestError, match="logit_bias"):
            client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, logit_bias=bad)


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "happy": {"type": "boolean"}},
    "required": ["name", "happy"],
}


@pytest.mark.parametrize(
    "extra",
    [
        {"guided_json": SCHEMA},
        {"guided_json": json.dumps(SCHEMA)},
        {"structured_outputs": {"json": SCHEMA}},
    ],
)
def test_vllm_guided_json(client, extra):
    c = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=60, extra_body=extra, seed=3
    )
    value = json.loads(c.choices[0].message.content)
    assert set(value) == {"name", "happy"} and isinstance(value["happy"], bool)


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        ({"guided_regex": r"[0-9]{3}-[0-9]{4}"}, lambda t: re.fullmatch(r"[0-9]{3}-[0-9]{4}", t)),
        ({"structured_outputs": {"regex": r"(yes|no)"}}, lambda t: t in ("yes", "no")),
        ({"guided_choice": ["red", "green", "blue"]}, lambda t: t in ("red", "green", "blue")),
        ({"structured_outputs": {"choice": ["cat", "dog"]}}, lambda t: t in ("cat", "dog")),
        ({"guided_grammar": 'root ::= "a" "b"+'}, lambda t: re.fullmatch("ab+", t)),
        ({"structured_outputs": {"grammar": 'root ::= "x" | "y"'}}, lambda t: t in ("x", "y")),
    ],
)
def test_vllm_guided_kinds(client, extra, check):
    for seed in (1, 2):
        c = client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=12, seed=seed, extra_body=extra
        )
        assert check(c.choices[0].text), (extra, c.choices[0].text)


def test_two_constraints_are_refused(http):
    r = http.post(
        "/v1/completions",
        json={"prompt": PROMPT, "guided_regex": "a+", "response_format": {"type": "json_object"}},
    )
    assert r.status_code == 400 and "json_schema" in r.text or "constraint" in r.text


def test_continue_final_message(client, engine):
    messages = USER + [{"role": "assistant", "content": "Once upon a"}]
    c = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=8,
        temperature=0,
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    rendered = "user: Tell a story.\nassistant: Once upon a"
    ids = engine.tokenizer.encode(rendered, add_special_tokens=False)
    direct = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 8, "temperature": 0})
    assert c.choices[0].message.content == direct.text
    with pytest.raises(openai.BadRequestError, match="continue_final_message"):
        client.chat.completions.create(
            model=MODEL, messages=USER, extra_body={"continue_final_message": True}
        )
