"""Chat messages to prompt tokens, through the tokenizer's chat template (or the server's
`--chat-template`)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from ..utils.checks import shown
from .http_io import HTTPError

ROLES = ("system", "developer", "user", "assistant", "tool")


def load_template(value: str | None) -> str | None:
    """`--chat-template`: a file holding a Jinja template, or the template itself."""
    if value is None:
        return None
    path = Path(value)
    if "{" not in value and path.is_file():
        return path.read_text()
    if "{" not in value:
        raise ValueError(f"chat_template: {value!r} is neither a file nor a Jinja template")
    return value


def check_messages(messages: Any, max_messages: int, max_chars: int) -> list[dict[str, Any]]:
    """Messages as the template expects them: role and text content (parts joined).
    More messages than the context has tokens, or more text than it can hold, are refused
    before the template renders them."""
    if not isinstance(messages, list) or not messages:
        raise HTTPError(400, "messages: expected a non-empty list of messages")
    if len(messages) > max_messages:
        raise HTTPError(
            400,
            f"messages: {len(messages)} messages cannot fit in the model's context of "
            f"{max_messages} tokens",
        )
    checked = []
    chars = 0
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise HTTPError(400, f"{where}: expected an object with `role` and `content`")
        role = m.get("role")
        if role not in ROLES:
            raise HTTPError(400, f"{where}.role: {shown(role)}; expected one of {', '.join(ROLES)}")
        message = dict(m)
        message["content"] = _text_content(m.get("content"), role, where)
        chars += len(message["content"])
        if chars > max_chars:
            raise HTTPError(400, f"messages: {chars}+ characters cannot fit in the model's context")
        checked.append(message)
    return checked


def check_template_kwargs(tokenizer: Any, kwargs: Any) -> dict[str, Any]:
    """`chat_template_kwargs` become variables of the template; one named like a parameter
    of the tokenizer's `apply_chat_template` (tokenize, return_dict...) would change how the
    server renders instead, so it is refused."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise HTTPError(400, "chat_template_kwargs: expected an object")
    reserved = set(inspect.signature(tokenizer.apply_chat_template).parameters) | {
        "messages",
        "conversation",
    }
    clash = sorted(k for k in kwargs if k in reserved)
    if clash:
        raise HTTPError(
            400, f"chat_template_kwargs: {', '.join(map(shown, clash))} cannot be set here"
        )
    return kwargs


def _text_content(content: Any, role: str, where: str) -> str:
    if content is None and role == "assistant":
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise HTTPError(
                    400, f"{where}.content[{j}].type: {shown(kind)}; only text parts are supported"
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise HTTPError(400, f"{where}.content[{j}].text: expected a string")
            texts.append(text)
        return "".join(texts)
    raise HTTPError(400, f"{where}.content: expected a string or a list of text parts")


def chat_continuation(body: dict[str, Any], messages: list[dict[str, Any]]) -> tuple[bool, bool]:
    """`add_generation_prompt` (default true) and vLLM's / SGLang's `continue_final_message`:
    the reply continues the last, assistant, message instead of starting a new one (the
    template renders it open). Asking for both is a contradiction, as vLLM answers."""
    add = body.get("add_generation_prompt")
    cont = body.get("continue_final_message", False)
    for name, value in (("add_generation_prompt", add), ("continue_final_message", cont)):
        if value is not None and not isinstance(value, bool):
            raise HTTPError(400, f"{name}: expected true or false, got {shown(value)}")
    if not cont:
        return add is not False, False
    if add:
        raise HTTPError(
            400, "continue_final_message: cannot be combined with add_generation_prompt true"
        )
    if messages[-1]["role"] != "assistant":
        raise HTTPError(400, "continue_final_message: the last message must be the assistant's")
    return False, True


def chat_prompt_ids(
    tokenizer: Any,
    template: str | None,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = True,
    template_kwargs: dict[str, Any] | None = None,
    continue_final_message: bool = False,
) -> list[int]:
    """Render the chat and tokenize it. The template writes any BOS itself, so the
    tokenizer adds no special tokens of its own."""
    template = template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise HTTPError(
            400,
            "messages: this model's tokenizer has no chat template; use /v1/completions "
            "with a prompt, or start the server with --chat-template",
        )
    try:
        text = tokenizer.apply_chat_template(
            messages,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            **(template_kwargs or {}),
        )
    except Exception as exc:  # jinja's own errors, and templates' raise_exception
        raise HTTPError(400, f"messages: the chat template refused them: {exc}") from None
    return tokenizer.encode(text, add_special_tokens=False)
