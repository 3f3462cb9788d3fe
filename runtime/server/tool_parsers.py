"""Tool calls in a model's text, in the formats chat templates teach (for tool_choice="auto").

- `hermes` (Qwen 2.5 / 3, Hermes, and the default): each call a JSON object
  `{"name": ..., "arguments": {...}}` between `<tool_call>` and `</tool_call>`, text around
  them being the message's content.
- `llama3_json` (Llama 3.1 / 3.2 / 3.3): the whole reply is one JSON object
  `{"name": ..., "parameters": {...}}`, or several separated by `;` (the `<|python_tag|>`
  before it is a special token, gone from the text).

A parser reads a whole reply (`parse`) or a stream of text pieces (`feed`, then `finish`):
content is passed on as it comes, except text that may still turn out to be (the start of) a
call, which is held until that is known. A call that does not parse stays text, as vLLM
leaves it. `--tool-call-parser` picks the format, or `auto` reads it off the chat template.
"""

from __future__ import annotations

import json
from typing import Any

from .tool_calls import new_call

FORMATS = ("hermes", "llama3_json")
ALIASES = {"qwen25": "hermes", "qwen": "hermes", "qwen3": "hermes", "llama3": "llama3_json"}

Parsed = tuple[str, list[dict[str, Any]]]  # (content, calls)


def format_for(choice: str, template: str | None) -> str:
    """The parser `--tool-call-parser` names, or (`auto`) the one the template writes."""
    choice = ALIASES.get(choice, choice)
    if choice != "auto":
        return choice
    text = template or ""
    if "<tool_call>" in text:
        return "hermes"
    if "<|python_tag|>" in text or ("<|start_header_id|>" in text and "parameters" in text):
        return "llama3_json"
    return "hermes"


def call_from_json(obj: Any) -> dict[str, Any] | None:
    """An OpenAI call from a parsed `{"name", "arguments" | "parameters"}`; None otherwise."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as JSON text already
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return new_call(obj["name"], json.dumps(args, ensure_ascii=False))


class ToolParser:
    def __init__(self) -> None:
        self.buffer = ""

    def parse(self, text: str) -> Parsed:
        content, calls = self.feed(text)
        more, late = self.finish()
        return content + more, calls + late

    def feed(self, piece: str) -> Parsed:
        raise NotImplementedError

    def finish(self) -> Parsed:
        raise NotImplementedError


class HermesParser(ToolParser):
    OPEN, CLOSE = "<tool_call>", "</tool_call>"

    def __init__(self) -> None:
        super().__init__()
        self.in_call = False

    def feed(self, piece: str) -> Parsed:
        self.buffer += piece
        content, calls = "", list[dict[str, Any]]()
        while True:
            if self.in_call:
                end = self.buffer.find(self.CLOSE)
                if end < 0:
                    return content, calls
                body, self.buffer = self.buffer[:end], self.buffer[end + len(self.CLOSE) :]
                self.in_call = False
                call = _json_call(body)
                if call is None:
                    content += self.OPEN + body + self.CLOSE
                else:
                    calls.append(call)
                continue
            start = self.buffer.find(self.OPEN)
            if start >= 0:
                content += self.buffer[:start]
                self.buffer = self.buffer[start + len(self.OPEN) :]
                self.in_call = True
                continue
            keep = partial_suffix(self.buffer, self.OPEN)
            content += self.buffer[: len(self.buffer) - keep]
            self.buffer = self.buffer[len(self.buffer) - keep :]
            return content, calls

    def finish(self) -> Parsed:
        rest, self.buffer = self.buffer, ""
        if not self.in_call:
            return rest, []
        call = _json_call(rest)  # a call the reply ended inside of (EOS before the tag)
        return ("", [call]) if call is not None else (self.OPEN + rest, [])


class Llama3JsonParser(ToolParser):
    def __init__(self) -> None:
        super().__init__()
        self.decided: bool | None = None  # None: not yet; True: JSON calls; False: text

    def feed(self, piece: str) -> Parsed:
        if self.decided is False:
            return piece, []
        self.buffer += piece
        stripped = self.buffer.lstrip()
        if not stripped:
            return "", []
        self.decided = stripped.startswith("{")
        if self.decided:
            return "", []
        out, self.buffer = self.buffer, ""
        return out, []

    def finish(self) -> Parsed:
        text, self.buffer = self.buffer, ""
        if not self.decided:
            return text, []
        decoder, at = json.JSONDecoder(), 0
        calls: list[dict[str, Any]] = []
        while True:
            while at < len(text) and text[at] in " \t\r\n;":
                at += 1
            if at == len(text):
                return "", calls
            try:
                obj, at = decoder.raw_decode(text, at)
            except ValueError:
                return text, []
            call = call_from_json(obj)
            if call is None:
                return text, []
            calls.append(call)


def parser_for(fmt: str) -> ToolParser:
    return Llama3JsonParser() if fmt == "llama3_json" else HermesParser()


def _json_call(body: str) -> dict[str, Any] | None:
    try:
        return call_from_json(json.loads(body))
    except ValueError:
        return None


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that begins `tag` (held back: it may be one)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
