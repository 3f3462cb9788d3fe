"""A /v1/responses request as the chat request it amounts to (the subset vLLM and SGLang
serve): `input` as text or items (messages with text parts, earlier `function_call`s and
their `function_call_output`s), `instructions` as the system message, `max_output_tokens`,
sampling fields, `text.format` (text, json_object, json_schema), function `tools` and
`tool_choice`, `parallel_tool_calls`, `stream`. Responses are not stored, so nothing can
continue one (`previous_response_id`, `conversation`) or run it in the background.
"""

from __future__ import annotations

from typing import Any

from ..utils.checks import shown
from .http_io import HTTPError

# Passed to the chat request as they are (the last ones: SGLang's and vLLM's extensions).
SAME = (
    "model",
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "stream",
    "top_k",
    "min_p",
    "seed",
    "repetition_penalty",
    "logit_bias",
)
# OpenAI's fields without an effect here.
IGNORED = (
    "metadata",
    "store",
    "user",
    "reasoning",
    "truncation",
    "include",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_options",
    "prompt_cache_retention",
    "safety_identifier",
    "max_tool_calls",
    "moderation",
    "stream_options",
)
REFUSED = {
    "previous_response_id": "responses are not stored here; send the whole input",
    "conversation": "responses are not stored here; send the whole input",
    "background": "background responses are not supported",
    "prompt": "stored prompts are not supported; send `input`",
    "top_logprobs": "not supported on /v1/responses; use /v1/chat/completions",
}
KNOWN = {"input", "instructions", "max_output_tokens", "text", "tools", "tool_choice"}
KNOWN |= set(SAME) | set(IGNORED) | set(REFUSED)


def chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completions body for a Responses one (fields it does not know go along, for
    the chat endpoint's field policy to judge)."""
    for name, why in REFUSED.items():
        if body.get(name) not in (None, False):
            raise HTTPError(400, f"{name}: {why}")
    chat: dict[str, Any] = {k: body[k] for k in SAME if k in body}
    chat.update({k: v for k, v in body.items() if k not in KNOWN})
    messages = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise HTTPError(400, f"instructions: expected a string, got {shown(instructions)}")
        messages.append({"role": "system", "content": instructions})
    messages += input_messages(body.get("input"))
    chat["messages"] = messages
    if body.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = body["max_output_tokens"]
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if body.get("text") is not None and not isinstance(body["text"], dict):
        raise HTTPError(400, f"text: expected an object, got {shown(body['text'])}")
    if fmt is not None:
        chat["response_format"] = response_format(fmt)
    if body.get("tools"):
        chat["tools"] = [chat_tool(t, i) for i, t in enumerate(_list(body["tools"], "tools"))]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    if choice is not None:
        chat["tool_choice"] = choice
    return chat


def input_messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(_list(value, "input")):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise HTTPError(400, f"{where}: expected an object")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(
                {"role": item.get("role"), "content": _text(item.get("content"), where)}
            )
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "{}")},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id"),
                    "content": output if isinstance(output, str) else _text(output, where),
                }
            )
        else:
            raise HTTPError(
                400,
                f"{where}.type: {shown(kind)}; expected message, function_call or "
                "function_call_output",
            )
    return messages


def _text(content: Any, where: str) -> Any:
    """Responses text parts (input_text, output_text) as chat text parts."""
    if not isinstance(content, list):
        return content
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text"):
            raise HTTPError(
                400, f"{where}.content[{j}].type: {shown(kind)}; only text parts are supported"
            )
        parts.append({"type": "text", "text": part.get("text")})
    return parts


def response_format(fmt: Any) -> dict[str, Any]:
    if not isinstance(fmt, dict):
        raise HTTPError(400, f"text.format: expected an object, got {shown(fmt)}")
    if fmt.get("type") == "json_schema":
        spec = {k: fmt[k] for k in ("name", "schema", "strict") if k in fmt}
        return {"type": "json_schema", "json_schema": spec}
    if fmt.get("type") in ("text", "json_object"):
        return {"type": fmt["type"]}
    raise HTTPError(
        400,
        f"text.format.type: {shown(fmt.get('type'))}; expected text, json_object or json_schema",
    )


def chat_tool(tool: Any, i: int) -> dict[str, Any]:
    """A Responses function tool (flat: name, parameters...) as a chat tool (nested)."""
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise HTTPError(400, f"tools[{i}].type: {shown(kind)}; only function tools are supported")
    fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
    return {"type": "function", "function": fn}


def _list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise HTTPError(400, f"{field}: expected a string or a list, got {shown(value)}")
    return value
