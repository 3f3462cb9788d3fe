"""--reasoning-parser: a reasoning model's <think> text in `reasoning_content`, apart from the
answer and from tool calls; SGLang's `separate_reasoning` and `stream_reasoning`. The model's
replies are forced with a regex (the default model does not think)."""

from __future__ import annotations

import json

import openai
import pytest
from loomlm.runtime.server.reasoning import ReasoningSplitter

from .conftest import CHAT_TEMPLATE
from .live_server import LiveServer

USER = [{"role": "user", "content": "Is it sunny?"}]
THOUGHT = "<think>\nThe sky is blue.\n</think>\n\nYes."


def regex_for(text: str) -> str:
    return "".join("\\" + c if c in "{}[]()|.*+?^$\\" else c for c in text)


@pytest.fixture(scope="module")
def client(engine):
    with LiveServer(engine, chat_template=CHAT_TEMPLATE, reasoning_parser="qwen3") as s:
        with openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0) as c:
            yield c


def ask(client, text, **extra):
    return client.chat.completions.create(
        model="tinystories-260k",
        messages=USER,
        max_tokens=80,
        temperature=0,
        extra_body={"regex": regex_for(text), **extra},
    )


def test_reasoning_is_separated(client):
    message = ask(client, THOUGHT).choices[0].message
    assert message.content == "Yes."
    assert message.reasoning_content == "The sky is blue."
    kept = ask(client, THOUGHT, separate_reasoning=False).choices[0].message
    assert kept.content == THOUGHT


def test_reasoning_streams_apart(client):
    for stream_reasoning in (True, False):
        chunks = list(
            client.chat.completions.create(
                model="tinystories-260k",
                messages=USER,
                max_tokens=80,
                temperature=0,
                stream=True,
                extra_body={"regex": regex_for(THOUGHT), "stream_reasoning": stream_reasoning},
            )
        )
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        thoughts = [d.reasoning_content for d in deltas if getattr(d, "reasoning_content", None)]
        content = "".join(d.content or "" for d in deltas)
        assert "".join(thoughts).strip() == "The sky is blue." and content == "Yes."
        if not stream_reasoning:
            assert len(thoughts) == 1  # held, then sent whole


def test_reasoning_before_a_tool_call(engine):
    from .tool_templates import HERMES

    call = '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with LiveServer(engine, chat_template=HERMES, reasoning_parser="deepseek-r1") as s:
        with openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0) as c:
            out = c.chat.completions.create(
                model="tinystories-260k",
                messages=USER,
                tools=[tool],
                max_tokens=150,
                temperature=0,
                extra_body={"regex": regex_for("Call f.</think>" + call)},
            )
    message = out.choices[0].message
    assert message.reasoning_content == "Call f."
    assert json.loads(message.tool_calls[0].function.arguments) == {"x": 1}
    assert out.choices[0].finish_reason == "tool_calls"


def test_splitter_holds_partial_tags():
    text = "<think>a</thi" + "nk>b"
    for step in (1, 2, 3):
        splitter, thought, answer = ReasoningSplitter("qwen3"), "", ""
        for k in range(0, len(text), step):
            r, c = splitter.feed(text[k : k + step])
            thought, answer = thought + r, answer + c
        r, c = splitter.finish()
        assert (thought + r, answer + c) == ("a", "b")
    assert ReasoningSplitter("qwen3").split("<thin") == (None, "<thin")
