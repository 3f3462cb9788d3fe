"""A prompt plus the new tokens asked for must fit in the context: 400 naming both numbers,
or with --allow-auto-truncate the new tokens cut to the room left (SGLang's and vLLM's
behaviour). A request that names no number gets the room left."""

from __future__ import annotations

import httpx
import openai
import pytest

from .conftest import CHAT_TEMPLATE
from .live_server import LiveServer


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def long_prompt(engine, tokens: int) -> list[int]:
    ids = engine.tokenizer.encode("Once upon a time, there was a little girl. " * 80)
    return ids[:tokens]


def test_openai_overflow_is_a_400_naming_both_numbers(client, engine):
    prompt = long_prompt(engine, 500)
    ctx = engine.max_context
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tinystories-260k", prompt=prompt, max_tokens=100)
    message = str(err.value)
    assert "max_tokens" in message and "500" in message and "100" in message
    assert str(ctx) in message
    # what fits is served; with no max_tokens, OpenAI's 16 is cut to the room left
    fits = client.completions.create(
        model="tinystories-260k",
        prompt=prompt,
        max_tokens=ctx - 500,
        extra_body={"ignore_eos": True},
    )
    assert fits.usage.completion_tokens == ctx - 500
    small = client.completions.create(
        model="tinystories-260k",
        prompt=long_prompt(engine, ctx - 4),
        extra_body={"ignore_eos": True},
    )
    assert small.usage.completion_tokens == 4 and small.choices[0].finish_reason == "length"


def test_chat_without_max_tokens_gets_the_rest_of_the_context(client, engine):
    c = client.chat.completions.create(
        model="tinystories-260k",
        messages=[{"role": "user", "content": "Tell a story."}],
        extra_body={"ignore_eos": True},
    )
    assert c.usage.prompt_tokens + c.usage.completion_tokens == engine.max_context
    with pytest.raises(openai.BadRequestError, match="max_completion_tokens"):
        client.chat.completions.create(
            model="tinystories-260k",
            messages=[{"role": "user", "content": "Tell a story."}],
            max_completion_tokens=engine.max_context,
        )


def test_native_generate_overflow(http, engine):
    prompt = long_prompt(engine, 500)
    r = http.post(
        "/generate", json={"input_ids": prompt, "sampling_params": {"max_new_tokens": 100}}
    )
    assert r.status_code == 400 and "sampling_params.max_new_tokens" in r.text
    # SGLang's default of 128 is cut to the room left when the caller named no number
    r = http.post("/generate", json={"input_ids": prompt, "sampling_params": {"ignore_eos": True}})
    assert r.status_code == 200
    assert r.json()["meta_info"]["completion_tokens"] == engine.max_context - 500


def test_allow_auto_truncate_clamps(engine):
    prompt = long_prompt(engine, 500)
    with LiveServer(engine, allow_auto_truncate=True, chat_template=CHAT_TEMPLATE) as s:
        r = httpx.post(
            f"{s.url}/v1/completions",
            json={"prompt": prompt, "max_tokens": 100, "ignore_eos": True},
            timeout=60,
        )
        assert r.status_code == 200
        assert r.json()["usage"]["completion_tokens"] == engine.max_context - 500
        assert r.json()["choices"][0]["finish_reason"] == "length"
        r = httpx.post(
            f"{s.url}/generate",
            json={
                "input_ids": prompt,
                "sampling_params": {"max_new_tokens": 100, "min_new_tokens": 50},
            },
            timeout=60,
        )
        assert r.status_code == 200
        assert r.json()["meta_info"]["completion_tokens"] == engine.max_context - 500
