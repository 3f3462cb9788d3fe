"""/v1/responses through the official client's `responses.create`: text and message input,
instructions, max_output_tokens, text.format json_schema, function tools (forced and parsed,
with earlier calls and their outputs in the input), and streams of Responses events."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from loomlm.runtime import Engine

from .live_server import LiveServer
from .tool_templates import HERMES

MODEL = "tinystories-260k"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 10}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


@pytest.fixture(scope="module")
def engine():
    with Engine(context_length=2048) as e:
        yield e


@pytest.fixture(scope="module")
def server(engine):
    with LiveServer(engine, chat_template=HERMES) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as c:
        yield c


def chat_text(engine, messages, n):
    text = engine.tokenizer.apply_chat_template(
        messages, chat_template=HERMES, tokenize=False, add_generation_prompt=True
    )
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": n, "temperature": 0})
    return out, len(ids)


def test_text_input_and_instructions(client, engine):
    r = client.responses.create(
        model=MODEL,
        input="Tell a story.",
        instructions="Be kind.",
        max_output_tokens=10,
        temperature=0,
    )
    direct, prompt = chat_text(
        engine,
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Tell a story."}],
        10,
    )
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.output_text == direct.text
    assert r.output[0].type == "message" and r.output[0].content[0].type == "output_text"
    assert r.usage.input_tokens == prompt and r.usage.output_tokens == 10
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"


def test_message_items_input(client, engine):
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Hello."}]},
        {"role": "user", "content": "Tell a story."},
    ]
    r = client.responses.create(model=MODEL, input=items, max_output_tokens=8, temperature=0)
    direct, _ = chat_text(
        engine,
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Tell a story."},
        ],
        8,
    )
    assert r.output_text == direct.text


def test_json_schema_format(client):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 8}, "good": {"type": "boolean"}},
        "required": ["name", "good"],
        "additionalProperties": False,
    }
    r = client.responses.create(
        model=MODEL,
        input="Describe a hero.",
        max_output_tokens=80,
        text={"format": {"type": "json_schema", "name": "hero", "schema": schema, "strict": True}},
    )
    jsonschema.validate(json.loads(r.output_text), schema)
    assert r.status == "completed"


def test_function_tools_forced_and_history(client):
    r = client.responses.create(
        model=MODEL,
        input="Weather in Paris?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=60,
        extra_body={"seed": 2},
    )
    [call] = [item for item in r.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    follow = client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"},
        ],
        tools=[WEATHER],
        max_output_tokens=5,
        temperature=0,
    )
    assert follow.output_text and follow.usage.input_tokens > r.usage.input_tokens


def test_auto_tool_call_parsed(client):
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    regex = "".join("\\" + c if c in "{}[]()|.*+?^$\\" else c for c in text)
    r = client.responses.create(
        model=MODEL,
        input="Weather in Rome?",
        tools=[WEATHER],
        max_output_tokens=80,
        temperature=0,
        extra_body={"regex": regex},
    )
    assert [item.type for item in r.output] == ["function_call"]
    assert json.loads(r.output[0].arguments) == {"city": "Rome"}
    assert r.status == "completed"


def test_stream_events(client):
    whole = client.responses.create(
        model=MODEL, input="Tell a story.", max_output_tokens=12, temperature=0
    )
    events = list(
        client.responses.create(
            model=MODEL, input="Tell a story.", max_output_tokens=12, temperature=0, stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text == events[-1].response.output_text


def test_stream_of_a_forced_call(client):
    events = list(
        client.responses.create(
            model=MODEL,
            input="Weather?",
            tools=[WEATHER],
            tool_choice="required",
            max_output_tokens=60,
            extra_body={"seed": 4},
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.done" in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert deltas == done.arguments
    jsonschema.validate(json.loads(done.arguments), WEATHER["parameters"])
    final = events[-1].response
    assert final.output[0].type == "function_call" and final.output[0].arguments == done.arguments


def test_the_sse_names_each_event(server):
    with httpx.stream(
        "POST",
        f"{server.url}/v1/responses",
        json={"input": "Hi", "max_output_tokens": 2, "stream": True},
        timeout=30,
    ) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[0] == "event: response.created" and lines[1].startswith("data: {")
    assert "data: [DONE]" not in lines


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"background": True}, "background"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"input": [{"type": "image", "url": "x"}]}, "input[0].type"),
        ({"model": "gpt-5"}, "model"),
    ],
)
def test_bad_responses_fields(server, extra, field):
    body = {"input": "Hi", "max_output_tokens": 2, **extra}
    r = httpx.post(f"{server.url}/v1/responses", json=body, timeout=30)
    assert r.status_code in (400, 404) and field in r.json()["error"]["message"]
