"""OpenAI tool calling on /v1/chat/completions: the request side.

`tools` (function tools), `tool_choice` ("none", "auto", "required" or a named function) and
`parallel_tool_calls` are checked here, and turned into what the engine runs:
- "none": the model answers in text (the template still shows it the tools, as vLLM does);
- "auto": the model chooses; a parser for the template's format (tool_parsers) finds the
  calls in its text;
- a named function: the output is constrained to that function's `parameters` schema, and is
  the call's arguments;
- "required": the output is constrained to a JSON list of one or more calls (one without
  parallel_tool_calls), each `{"name": ..., "parameters": {...}}` for one of the tools.
The last two go through the engine's JSON-schema constraint, so arguments validate against
the function's schema by construction (vLLM generates forced calls the same way).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..utils.checks import shown
from .http_io import HTTPError

CHOICES = ("none", "auto", "required")


@dataclass
class ToolRequest:
    tools: list[dict[str, Any]]  # as the template takes them: {"type": "function", "function"}
    choice: str  # "none" | "auto" | "required" | "named"
    named: str | None = None  # the function tool_choice names
    parallel: bool = True
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> parameters
    # Asked for with OpenAI's deprecated `functions` / `function_call`: one call, answered
    # as the message's `function_call` (finish_reason "function_call") instead of tool_calls.
    legacy: bool = False

    @property
    def constrained(self) -> bool:
        return self.choice in ("required", "named")

    def json_schema(self) -> dict[str, Any] | None:
        """The constraint for a forced call; None when the model chooses."""
        if self.choice == "named":
            assert self.named is not None
            return self.schemas[self.named]
        if self.choice != "required":
            return None
        calls = [
            {
                "type": "object",
                "properties": {"name": {"enum": [name]}, "parameters": schema},
                "required": ["name", "parameters"],
                "additionalProperties": False,
            }
            for name, schema in self.schemas.items()
        ]
        array: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": calls}}
        if not self.parallel:
            array["maxItems"] = 1
        return array

    def forced_calls(self, text: str) -> list[dict[str, Any]]:
        """The calls in a forced output (named: the arguments; required: the list). A list
        cut short by max_tokens gives the calls it completed."""
        if self.choice == "named":
            assert self.named is not None
            return [new_call(self.named, text)]
        decoder, calls, at = json.JSONDecoder(), [], text.find("[") + 1
        while at > 0:
            while at < len(text) and text[at] in " \t\r\n,":
                at += 1
            try:
                item, at = decoder.raw_decode(text, at)
            except ValueError:
                break
            calls.append(new_call(item["name"], json.dumps(item["parameters"])))
        return calls


def new_call(name: str, arguments: str) -> dict[str, Any]:
    """An OpenAI tool call: a fresh id, the function's name, its arguments as JSON text."""
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def parse_tools(body: dict[str, Any]) -> ToolRequest | None:
    """`tools`, `tool_choice` and `parallel_tool_calls`, checked; None without tools. The
    deprecated `functions` and `function_call` are read as the tools and choice they
    stand for."""
    if body.get("functions") or body.get("function_call") is not None:
        if body.get("tools") or body.get("tool_choice") is not None:
            raise HTTPError(400, "functions: send either functions or tools, not both")
        legacy = parse_tools(_as_tools(body))
        if legacy is not None:
            legacy.legacy, legacy.parallel = True, False
        return legacy
    tools, choice = body.get("tools"), body.get("tool_choice")
    parallel = body.get("parallel_tool_calls", True)
    if parallel is not None and not isinstance(parallel, bool):
        raise HTTPError(400, f"parallel_tool_calls: expected true or false, got {shown(parallel)}")
    if not tools:
        if choice not in (None, "none"):
            raise HTTPError(400, "tool_choice: needs `tools`")
        return None
    if not isinstance(tools, list):
        raise HTTPError(400, f"tools: expected a list of tools, got {shown(tools)}")
    schemas: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise HTTPError(400, f"{where}.type: only 'function' tools are supported")
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise HTTPError(400, f"{where}.function.name: expected a non-empty string")
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise HTTPError(400, f"{where}.function.parameters: expected a JSON schema object")
        if fn["name"] in schemas:
            raise HTTPError(400, f"{where}.function.name: {fn['name']!r} is given twice")
        schemas[fn["name"]] = params
    request = ToolRequest(tools, "auto", None, parallel is not False, schemas)
    if choice is None or choice in CHOICES:
        request.choice = choice or "auto"
        return request
    named = None
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        named = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(named, str):
        raise HTTPError(
            400,
            f"tool_choice: expected 'none', 'auto', 'required' or "
            f'{{"type": "function", "function": {{"name": ...}}}}, got {shown(choice)}',
        )
    if named not in schemas:
        raise HTTPError(400, f"tool_choice.function.name: {named!r} is not one of the tools")
    request.choice, request.named = "named", named
    return request


def _as_tools(body: dict[str, Any]) -> dict[str, Any]:
    functions, choice = body.get("functions"), body.get("function_call")
    if functions is not None and not isinstance(functions, list):
        raise HTTPError(400, f"functions: expected a list of functions, got {shown(functions)}")
    tools = [{"type": "function", "function": f} for f in functions or []]
    if isinstance(choice, dict):
        choice = {"type": "function", "function": choice}
    return {"tools": tools, "tool_choice": choice}


def history_for_template(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assistant `tool_calls` checked, their `arguments` (JSON text in OpenAI's API) parsed
    into objects, as chat templates expect them (vLLM does the same); `tool` messages need
    the id of the call they answer."""
    out = []
    for i, m in enumerate(messages):
        calls = m.get("tool_calls")
        if m["role"] == "tool" and not isinstance(m.get("tool_call_id", ""), str):
            raise HTTPError(400, f"messages[{i}].tool_call_id: expected a string")
        if calls is None:
            out.append(m)
            continue
        if m["role"] != "assistant" or not isinstance(calls, list):
            raise HTTPError(400, f"messages[{i}].tool_calls: only an assistant's, as a list")
        parsed = []
        for j, call in enumerate(calls):
            where = f"messages[{i}].tool_calls[{j}]"
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise HTTPError(400, f"{where}.function.name: expected a string")
            args = fn.get("arguments", "{}")
            if isinstance(args, str):
                try:
                    args = json.loads(args) if args.strip() else {}
                except ValueError:
                    raise HTTPError(400, f"{where}.function.arguments: not JSON") from None
            parsed.append({**call, "function": {**fn, "arguments": args}})
        out.append({**m, "tool_calls": parsed})
    return out
