"""Agent frameworks on the OpenAI API, unchanged, against a real `loomlm serve`: LangChain's
ChatOpenAI (invoke, stream, with_structured_output in its three methods, bind_tools, the
Responses API) and litellm (completion, stream, tools)."""

from __future__ import annotations

import json
import os

import jsonschema
import pytest
from loomlm.runtime import Engine
from pydantic import BaseModel, Field

# litellm fetches a model price list from the network at import unless told to use its own.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402

from .live_server import LiveServer  # noqa: E402
from .tool_templates import HERMES  # noqa: E402

MODEL = "tinystories-260k"
STORY = [{"role": "user", "content": "Tell a story."}]


class Hero(BaseModel):
    name: str = Field(max_length=8)
    brave: bool


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 10}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER_SCHEMA},
}


@pytest.fixture(scope="module")
def engine():
    with Engine(context_length=2048) as e:
        yield e


@pytest.fixture(scope="module")
def url(engine):
    with LiveServer(engine, chat_template=HERMES) as s:
        yield f"{s.url}/v1"


def direct_chat(engine, messages, n):
    text = engine.tokenizer.apply_chat_template(
        messages, chat_template=HERMES, tokenize=False, add_generation_prompt=True
    )
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    return engine.generate(input_ids=ids, sampling_params={"max_new_tokens": n, "temperature": 0})


def llm(url, **kw):
    return ChatOpenAI(model=MODEL, base_url=url, api_key="x", max_retries=0, **kw)


def test_langchain_invoke_and_stream(url, engine):
    model = llm(url, temperature=0, max_completion_tokens=12)
    said = model.invoke("Tell a story.")
    assert said.content == direct_chat(engine, STORY, 12).text
    assert said.usage_metadata["output_tokens"] == 12
    assert "".join(c.content for c in model.stream("Tell a story.")) == said.content


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_structured_output(url, method):
    model = llm(url, max_completion_tokens=80, seed=5).with_structured_output(Hero, method=method)
    hero = model.invoke("Describe a hero.")
    assert isinstance(hero, Hero)


def test_langchain_structured_output_json_mode(url, engine):
    """json_mode only asks for a JSON object and the model picks its fields (this one writes
    stories into its strings until a bias on `}` lets it stop)."""
    brace = engine.tokenizer.convert_tokens_to_ids("<0x7D>")
    model = llm(url, max_completion_tokens=100, seed=2, logit_bias={brace: 20})
    out = model.with_structured_output(Hero, method="json_mode", include_raw=True).invoke(
        "Describe a hero as JSON."
    )
    value = json.loads(out["raw"].content)
    assert isinstance(value, dict) and value  # a whole object, with a member


def test_langchain_bind_tools(url):
    model = llm(url, max_completion_tokens=60, seed=3).bind_tools(
        [get_weather], tool_choice="get_weather"
    )
    message = model.invoke("What is the weather in Paris?")
    [call] = message.tool_calls
    assert call["name"] == "get_weather" and call["id"].startswith("call_")
    assert set(call["args"]) == {"city"} and isinstance(call["args"]["city"], str)
    auto = llm(url, max_completion_tokens=8, temperature=0).bind_tools([get_weather])
    assert auto.invoke("Tell a story.").content  # the model chose to answer in text


def test_langchain_responses_api(url, engine):
    model = llm(url, temperature=0, max_completion_tokens=10, use_responses_api=True)
    said = model.invoke("Tell a story.")
    assert said.text == direct_chat(engine, STORY, 10).text


def litellm_args(url):
    return {"model": f"openai/{MODEL}", "api_base": url, "api_key": "x"}


def test_litellm_completion_and_stream(url, engine):
    out = litellm.completion(messages=STORY, temperature=0, max_tokens=10, **litellm_args(url))
    assert out.choices[0].message.content == direct_chat(engine, STORY, 10).text
    pieces = litellm.completion(
        messages=STORY, temperature=0, max_tokens=10, stream=True, **litellm_args(url)
    )
    text = "".join(p.choices[0].delta.content or "" for p in pieces)
    assert text == out.choices[0].message.content


def test_litellm_tools(url):
    out = litellm.completion(
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=60,
        seed=2,
        **litellm_args(url),
    )
    [call] = out.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_SCHEMA)
    assert out.choices[0].finish_reason == "tool_calls"
