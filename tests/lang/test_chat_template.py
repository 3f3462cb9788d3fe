"""Chat templates: role prefixes and suffixes derived from Jinja templates, the same text on
both backends, and the plain fallback."""

from __future__ import annotations

import loomlm
import pytest
from loomlm.chat_template import DEFAULT, ChatTemplate

from ..runtime.server.live_server import LiveServer

CHATML_WITH_DEFAULT_SYSTEM = (
    "{% for m in messages %}"
    "{% if loop.first and m['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
    "<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
NO_SYSTEM = (  # Gemma-style: refuses a system turn
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def test_chatml_with_a_default_system_prompt():
    t = ChatTemplate.from_jinja(CHATML_WITH_DEFAULT_SYSTEM)
    for role in ("system", "user", "assistant"):
        assert t.prefix_and_suffix(role) == (f"<|im_start|>{role}\n", "<|im_end|>\n")
    assert t.default_system_prompt == "You are a helpful assistant."
    assert t.stop_str == ("<|im_end|>",)


def test_llama3_drops_the_bos_the_tokenizer_adds():
    t = ChatTemplate.from_jinja(LLAMA3, bos_token="<|begin_of_text|>")
    assert t.prefix_and_suffix("system") == (
        "<|start_header_id|>system<|end_header_id|>\n\n",
        "<|eot_id|>",
    )
    assert (
        t.prefix_and_suffix("assistant")[0] == "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert t.default_system_prompt is None and t.stop_str == ("<|eot_id|>",)


def test_a_template_without_a_system_role():
    t = ChatTemplate.from_jinja(NO_SYSTEM, bos_token="<bos>")
    assert t.prefix_and_suffix("user") == ("<start_of_turn>user\n", "<end_of_turn>\n")
    assert t.prefix_and_suffix("assistant") == ("<start_of_turn>model\n", "<end_of_turn>\n")
    with pytest.raises(ValueError, match="no 'system' role"):
        t.prefix_and_suffix("system")


@loomlm.function
def chat(s):
    s += loomlm.user("Tell me a story.")
    s += loomlm.assistant(loomlm.gen("reply", max_tokens=10))


def test_the_servers_template_reaches_the_http_backend(engine):
    with LiveServer(engine, chat_template=CHATML_WITH_DEFAULT_SYSTEM) as server:
        endpoint = loomlm.RuntimeEndpoint(server.url)
        there = chat.run(temperature=0, backend=endpoint)
        endpoint.shutdown()
    here = chat.run(
        temperature=0,
        backend=loomlm.EngineBackend(engine, ChatTemplate.from_jinja(CHATML_WITH_DEFAULT_SYSTEM)),
    )
    assert there.text() == here.text()
    assert there.text().startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    )
    assert [m["role"] for m in there.messages()] == ["system", "user", "assistant"]


def test_plain_fallback_without_a_template(engine, endpoint):
    assert engine.tokenizer.chat_template is None
    assert loomlm.EngineBackend(engine).chat_template == DEFAULT
    assert endpoint.chat_template == DEFAULT
    with pytest.raises(ValueError, match="chat_template"):
        loomlm.EngineBackend(engine, chat_template="no-such-template")
