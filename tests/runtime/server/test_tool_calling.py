"""OpenAI tool calling on /v1/chat/completions, through the official client: tools rendered
by the chat template, forced calls that validate against the function's schema, calls
parsed out of free text (Hermes and Llama 3 JSON formats), streamed tool-call deltas, and a
history with calls and their results."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from loomlm.runtime import Engine
from loomlm.runtime.server.tool_parsers import HermesParser, Llama3JsonParser

from .live_server import LiveServer
from .tool_templates import HERMES, LLAMA3_JSON

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 6}, "am": {"type": "boolean"}},
            "required": ["zone", "am"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
HERMES_CALL = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
    "\n</tool_call>"
)


def regex_for(text: str) -> str:
    return "".join("\\" + c if c in "{}[]()|.*+?^$\\" else c for c in text)


@pytest.fixture(scope="module")
def engine():
    """The default model with room for the tools' JSON in the prompt (its vocabulary of 512
    spends a token on every 1-2 characters of it)."""
    with Engine(context_length=2048) as e:
        yield e


@pytest.fixture(scope="module")
def hermes(engine):
    with LiveServer(engine, chat_template=HERMES) as s:
        with openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0) as c:
            yield c


@pytest.fixture(scope="module")
def llama(engine):
    with LiveServer(engine, chat_template=LLAMA3_JSON) as s:
        with openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0) as c:
            yield c


def chat(client, **kw):
    return client.chat.completions.create(model="tinystories-260k", **kw)


def validates(call) -> None:
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_the_template_renders_the_tools_and_none_answers_in_text(hermes, engine):
    c = chat(hermes, messages=USER, tools=TOOLS, tool_choice="none", max_tokens=8, temperature=0)
    text = engine.tokenizer.apply_chat_template(
        USER, tools=TOOLS, chat_template=HERMES, tokenize=False, add_generation_prompt=True
    )
    assert '"get_weather"' in text
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    direct = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 8, "temperature": 0})
    assert c.usage.prompt_tokens == len(ids)
    assert c.choices[0].message.content == direct.text
    assert c.choices[0].message.tool_calls is None and c.choices[0].finish_reason != "tool_calls"


def test_a_named_function_is_called_with_valid_arguments(hermes):
    c = chat(
        hermes,
        messages=USER,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=80,
        seed=1,
    )
    message = c.choices[0].message
    assert c.choices[0].finish_reason == "tool_calls"
    assert message.content is None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    validates(call)


def test_required_calls_validate_on_50_seeds(hermes):
    """The acceptance check: whatever the sampler draws, a forced call is one of the tools,
    with arguments that validate against its schema. n=50 with a seed: each sample draws
    from its own seed (derived from the request's and its index)."""
    c = chat(
        hermes,
        messages=USER,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=120,
        n=50,
        seed=7,
    )
    names, arguments = set(), set()
    for choice in c.choices:
        assert choice.finish_reason == "tool_calls", choice.message
        [call] = choice.message.tool_calls
        validates(call)
        names.add(call.function.name)
        arguments.add(call.function.arguments)
    assert names == {"get_weather", "get_time"}  # the model chose, among both tools
    assert len(arguments) > 10  # 50 different draws, not one answer repeated
    # in parallel the list may run to max_tokens: the calls it completed are returned
    several = chat(
        hermes, messages=USER, tools=TOOLS, tool_choice="required", max_tokens=120, n=8, seed=3
    )
    for choice in several.choices:
        assert choice.message.tool_calls, choice.message
        for call in choice.message.tool_calls:
            validates(call)
        assert choice.finish_reason in ("tool_calls", "length")


def test_the_deprecated_functions_fields(hermes):
    """`functions` / `function_call`, as older clients send them: one call, answered as
    the message's `function_call`."""
    kw = dict(
        messages=USER,
        functions=[WEATHER["function"], TIME["function"]],
        function_call={"name": "get_weather"},
        max_tokens=80,
        seed=4,
    )
    c = chat(hermes, **kw)
    message = c.choices[0].message
    assert c.choices[0].finish_reason == "function_call" and message.tool_calls is None
    assert message.function_call.name == "get_weather"
    jsonschema.validate(json.loads(message.function_call.arguments), SCHEMAS["get_weather"])
    chunks = list(chat(hermes, stream=True, **kw))
    deltas = [ch.choices[0].delta.function_call for ch in chunks if ch.choices]
    arguments = "".join(d.arguments or "" for d in deltas if d is not None)
    assert deltas[1].name == "get_weather" and arguments == message.function_call.arguments
    assert chunks[-1].choices[0].finish_reason == "function_call"


def test_auto_parses_hermes_calls_from_the_text(hermes):
    text = "Let me look." + HERMES_CALL
    c = chat(
        hermes,
        messages=USER,
        tools=TOOLS,
        max_tokens=120,
        temperature=0,
        extra_body={"regex": regex_for(text)},
    )
    message = c.choices[0].message
    assert c.choices[0].finish_reason == "tool_calls"
    assert message.content == "Let me look."
    [call] = message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}
    plain = chat(hermes, messages=USER, tools=TOOLS, max_tokens=10, temperature=0)
    assert plain.choices[0].message.tool_calls is None
    assert plain.choices[0].message.content and plain.choices[0].finish_reason == "length"


def test_auto_streams_content_then_the_call(hermes):
    text = "Sure." + HERMES_CALL + HERMES_CALL.replace("Paris", "Rome")
    chunks = list(
        chat(
            hermes,
            messages=USER,
            tools=TOOLS,
            max_tokens=200,
            temperature=0,
            stream=True,
            extra_body={"regex": regex_for(text)},
        )
    )
    content = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    deltas = [d for ch in chunks if ch.choices for d in ch.choices[0].delta.tool_calls or []]
    assert content == "Sure."
    assert [d.index for d in deltas] == [0, 1]
    assert [json.loads(d.function.arguments)["city"] for d in deltas] == ["Paris", "Rome"]
    assert all(d.id.startswith("call_") and d.function.name == "get_weather" for d in deltas)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_named_call_streams_its_arguments(hermes):
    kw = dict(
        messages=USER,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=80,
        temperature=0,
    )
    whole = chat(hermes, **kw).choices[0].message.tool_calls[0]
    chunks = list(chat(hermes, stream=True, **kw))
    deltas = [d for ch in chunks if ch.choices for d in ch.choices[0].delta.tool_calls or []]
    assert deltas[0].id and deltas[0].function.name == "get_time"
    assert len(deltas) > 2  # the arguments come piece by piece
    assert "".join(d.function.arguments or "" for d in deltas) == whole.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_llama3_json_calls_are_parsed(llama):
    text = '{"name": "get_time", "parameters": {"zone": "UTC", "am": true}}'
    c = chat(
        llama,
        messages=USER,
        tools=TOOLS,
        max_tokens=80,
        temperature=0,
        extra_body={"regex": regex_for(text)},
    )
    [call] = c.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    assert json.loads(call.function.arguments) == {"zone": "UTC", "am": True}
    assert c.choices[0].message.content is None


def test_a_history_with_calls_and_results_is_rendered(hermes, engine):
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
    }
    history = USER + [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 degrees"},
    ]
    c = chat(hermes, messages=history, tools=TOOLS, max_tokens=6, temperature=0)
    # what the template gets: arguments as an object, as chat templates expect them
    parsed = [
        USER[0],
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    **call,
                    "function": {
                        **call["function"],
                        "arguments": json.loads(call["function"]["arguments"]),
                    },
                }
            ],
        },
        history[2],
    ]
    text = engine.tokenizer.apply_chat_template(
        parsed, tools=TOOLS, chat_template=HERMES, tokenize=False, add_generation_prompt=True
    )
    assert '"arguments": {"city": "Paris", "unit": "celsius"}' in text and "Sunny" in text
    assert c.usage.prompt_tokens == len(engine.tokenizer.encode(text, add_special_tokens=False))


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"tools": {"type": "function"}}, "tools"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
            "tool_choice",
        ),
        ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ],
)
def test_bad_tool_fields_name_themselves(hermes, extra, field):
    with pytest.raises(openai.BadRequestError) as err:
        chat(hermes, messages=USER, max_tokens=2, **extra)
    assert field in str(err.value)


def test_parsers_read_streams_as_whole_replies():
    text = "Hi <tool_ <tool_call>\n" + '{"name": "f", "arguments": {"a": 1}}\n</tool_call> bye'
    whole = HermesParser().parse(text)
    assert whole[0] == "Hi <tool_  bye" and len(whole[1]) == 1
    for step in (1, 3, 7):
        p, content, calls = HermesParser(), "", []
        for k in range(0, len(text), step):
            c, found = p.feed(text[k : k + step])
            content, calls = content + c, calls + found
        c, found = p.finish()
        assert content + c == whole[0]
        assert [x["function"] for x in calls + found] == [x["function"] for x in whole[1]]
    # a call that does not parse stays text; an unclosed one at the end is still read
    assert HermesParser().parse("<tool_call>{oops}</tool_call>") == (
        "<tool_call>{oops}</tool_call>",
        [],
    )
    content, calls = HermesParser().parse('<tool_call>{"name": "f", "arguments": {}}')
    assert content == "" and calls[0]["function"] == {"name": "f", "arguments": "{}"}
    content, calls = Llama3JsonParser().parse(
        ' {"name": "f", "parameters": {"x": 1}}; {"name": "g", "parameters": {}}'
    )
    assert content == "" and [c["function"]["name"] for c in calls] == ["f", "g"]
    assert Llama3JsonParser().parse("Once upon a time") == ("Once upon a time", [])
    assert Llama3JsonParser().parse('{"story": 1}') == ('{"story": 1}', [])
