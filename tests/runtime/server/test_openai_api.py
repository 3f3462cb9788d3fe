"""The OpenAI endpoints, driven by the official `openai` client."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from .conftest import CHAT_TEMPLATE
from .live_server import LiveServer

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def test_models_lists_the_served_model(client, engine):
    models = client.models.list().data
    assert [m.id for m in models] == ["tinystories-260k"]
    assert client.models.retrieve("tinystories-260k").max_model_len == engine.max_context


def test_a_model_not_served_is_a_404_naming_the_served_ones(client):
    """OpenAI and vLLM answer 404 for a model they do not serve (it used to be answered by
    the served one, whatever the name)."""
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="gpt-4o", prompt=PROMPT, max_tokens=2)
    assert "'gpt-4o' is not served here; served: tinystories-260k" in str(err.value)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_several_served_model_names(engine):
    with LiveServer(engine, served_model_name="story, tiny/story-260k") as s:
        with openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0) as c:
            assert [m.id for m in c.models.list().data] == ["story", "tiny/story-260k"]
            assert c.models.retrieve("tiny/story-260k").id == "tiny/story-260k"
            for name in ("story", "tiny/story-260k"):
                out = c.completions.create(model=name, prompt=PROMPT, max_tokens=2)
                assert out.model == name  # the name asked for, as vLLM answers
            with pytest.raises(openai.NotFoundError):
                c.completions.create(model="tinystories-260k", prompt=PROMPT, max_tokens=2)


def test_completion_greedy_equals_engine(client, model, engine):
    direct = engine.generate(PROMPT, {"max_new_tokens": 20, "temperature": 0})
    c = client.completions.create(model=model, prompt=PROMPT, max_tokens=20, temperature=0)
    assert c.object == "text_completion" and c.model == model
    assert c.choices[0].text == direct.text
    assert c.choices[0].finish_reason == "length"
    assert c.usage.prompt_tokens == direct.prompt_tokens
    assert c.usage.completion_tokens == 20 and c.usage.total_tokens == direct.prompt_tokens + 20


def test_completion_default_max_tokens_is_16(client, model):
    c = client.completions.create(
        model=model, prompt=PROMPT, temperature=0, extra_body={"ignore_eos": True}
    )
    assert c.usage.completion_tokens == 16


def test_completion_n_stop_and_seed(client, model, engine):
    c = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=30, n=3, seed=11, temperature=1.0
    )
    assert [ch.index for ch in c.choices] == [0, 1, 2]
    again = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=30, n=3, seed=11, temperature=1.0
    )
    assert [ch.text for ch in again.choices] == [ch.text for ch in c.choices]
    assert c.usage.prompt_tokens == len(engine.tokenizer.encode(PROMPT))  # counted once
    greedy = engine.generate(PROMPT, {"max_new_tokens": 30, "temperature": 0}).text
    stop = greedy.split()[3]
    s = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop]
    )
    assert s.choices[0].finish_reason == "stop"
    assert s.choices[0].text == greedy[: greedy.index(stop)]


def test_completion_batch_of_prompts_and_token_ids(client, model, engine):
    ids = engine.tokenizer.encode("The dog")
    c = client.completions.create(model=model, prompt=[ids, ids], max_tokens=5, temperature=0)
    direct = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 5, "temperature": 0})
    assert [ch.text for ch in c.choices] == [direct.text, direct.text]


def test_completion_logprobs_and_echo(client, model, engine):
    c = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3
    )
    lp = c.choices[0].logprobs
    direct = engine.generate(
        PROMPT, {"max_new_tokens": 6, "temperature": 0}, return_logprob=True, top_logprobs_num=3
    )
    assert lp.token_logprobs == [e[0] for e in direct.output_token_logprobs]
    pieces = engine.tokenizer.convert_ids_to_tokens([e[1] for e in direct.output_token_logprobs])
    assert lp.tokens == [p.replace("\u2581", " ") for p in pieces]  # SentencePiece's spaces
    assert all(
        len(row) == 3 and max(row.values()) == pytest.approx(v)
        for row, v in zip(lp.top_logprobs, lp.token_logprobs)
    )
    assert lp.text_offset[0] == 0
    e = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=2, temperature=0, logprobs=0, echo=True
    )
    assert e.choices[0].text.startswith(PROMPT)
    n_prompt = len(engine.tokenizer.encode(PROMPT))
    assert len(e.choices[0].logprobs.token_logprobs) == n_prompt + 2
    assert e.choices[0].logprobs.token_logprobs[0] is None  # nothing scores the first token


def test_completion_stream_with_usage(client, model):
    full = client.completions.create(model=model, prompt=PROMPT, max_tokens=25, temperature=0)
    chunks = list(
        client.completions.create(
            model=model,
            prompt=PROMPT,
            max_tokens=25,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == full.choices[0].text
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 25
    assert all(ch.usage is None for ch in chunks[:-1])


def test_chat_uses_the_template_and_matches_engine(client, model, engine):
    messages = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Tell a story."},
    ]
    c = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
    rendered = "system: Be kind.\nuser: Tell a story.\nassistant:"
    ids = engine.tokenizer.encode(rendered, add_special_tokens=False)
    direct = engine.generate(
        input_ids=ids, sampling_params={"max_new_tokens": 12, "temperature": 0}
    )
    assert c.object == "chat.completion"
    assert c.choices[0].message.role == "assistant"
    assert c.choices[0].message.content == direct.text
    assert c.usage.prompt_tokens == len(ids)
    m = client.chat.completions.create(
        model=model, messages=messages, max_completion_tokens=5, temperature=0
    )
    assert m.usage.completion_tokens == 5


def test_chat_text_parts_logprobs_and_penalties(client, model):
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": " there"}],
        }
    ]
    c = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        presence_penalty=0.5,
        frequency_penalty=0.5,
    )
    content = c.choices[0].logprobs.content
    assert len(content) == c.usage.completion_tokens
    assert all(len(x.top_logprobs) == 2 and x.bytes == list(x.token.encode()) for x in content)


def test_chat_stream(client, model):
    messages = [{"role": "user", "content": "Tell a story."}]
    full = client.chat.completions.create(
        model=model, messages=messages, max_tokens=20, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=20,
            temperature=0,
            stream=True,
            n=2,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    for i in range(2):
        text = "".join(
            ch.choices[0].delta.content or ""
            for ch in chunks
            if ch.choices and ch.choices[0].index == i
        )
        assert text == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 40


def test_chat_json_response_format(client, model):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
    }
    c = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Describe a person."}],
        max_tokens=200,
        seed=3,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema},
        },
    )
    assert c.choices[0].finish_reason == "stop"
    doc = json.loads(c.choices[0].message.content)
    assert set(doc) == {"name", "age"} and isinstance(doc["age"], int)


def test_chat_without_a_template_is_a_clear_400(engine):
    with LiveServer(engine) as s:  # no --chat-template; TinyStories' tokenizer has none
        with openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0) as c:
            with pytest.raises(openai.BadRequestError) as err:
                c.chat.completions.create(
                    model=c.models.list().data[0].id,
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=3,
                )
    assert "chat template" in str(err.value)


def test_bad_openai_fields_name_themselves(server):
    cases = [
        ({"prompt": PROMPT, "max_tokens": -1}, "max_tokens"),
        ({"prompt": PROMPT, "temperature": "hot"}, "temperature"),
        ({"prompt": PROMPT, "logprobs": 50}, "logprobs"),
        ({"prompt": PROMPT, "logit_bias": {"5": 300}}, "logit_bias[5]"),
        ({"prompt": PROMPT, "use_beam_search": True}, "use_beam_search"),
        ({"max_tokens": 3}, "prompt"),
    ]
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for body, field in cases:
            r = http.post("/v1/completions", json=body)
            assert r.status_code == 400, body
            assert field in r.json()["error"]["message"], (body, r.json())
        chat_cases = [
            ({"messages": []}, "messages"),
            ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
            (
                {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
                "messages[0].content[0].type",
            ),
            ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
            (
                {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
                "tools",
            ),
            (
                {
                    "messages": [{"role": "user", "content": "x"}],
                    "response_format": {"type": "xml"},
                },
                "response_format.type",
            ),
            (
                {
                    "messages": [{"role": "user", "content": "x"}],
                    "stream_options": {"include_usage": True},
                },
                "stream_options",
            ),
        ]
        for body, field in chat_cases:
            r = http.post("/v1/chat/completions", json=body)
            assert r.status_code == 400, body
            assert field in r.json()["error"]["message"], (body, r.json())
        assert (
            http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}).status_code
            == 200
        )


def test_template_file_is_accepted(engine, tmp_path):
    path = tmp_path / "template.jinja"
    path.write_text(CHAT_TEMPLATE)
    with LiveServer(engine, chat_template=str(path)) as s:
        r = httpx.post(
            f"{s.url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Tell a story."}], "max_tokens": 3},
            timeout=30,
        )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
