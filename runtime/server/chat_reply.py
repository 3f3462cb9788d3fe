"""What one chat choice's generated text becomes in OpenAI's shapes: content, tool calls and
finish reason, for a whole reply or for a stream's deltas.

Without tools (or with tool_choice "none") the text is the content. With a named function
the text is the call's arguments: a stream sends the call's id and name first, then the
arguments as they come. With "required" the text is a JSON list of calls, sent once whole.
With "auto" a parser for the template's format separates content from calls (tool_parsers);
a stream sends each call whole once its closing tag (or the reply's end) is seen.
"""

from __future__ import annotations

from typing import Any

from .tool_calls import ToolRequest, new_call
from .tool_parsers import parser_for


class ChatReply:
    def __init__(self, tools: ToolRequest | None, fmt: str) -> None:
        self.tools = tools if tools is not None and tools.choice != "none" else None
        self.parser = parser_for(fmt) if self.tools and self.tools.choice == "auto" else None
        self.calls = 0  # calls made (sent, in a stream)
        self.text = ""  # a "required" stream's text, parsed at its end
        self.named: dict[str, Any] | None = None  # a named call being streamed

    def whole(self, text: str) -> dict[str, Any]:
        """The assistant message for a whole reply."""
        message: dict[str, Any] = {"role": "assistant", "content": text}
        calls: list[dict[str, Any]] = []
        if self.tools is not None and self.tools.constrained:
            calls = self.tools.forced_calls(text)
            message["content"] = None if calls else text
        elif self.parser is not None:
            content, calls = self.parser.parse(text)
            message["content"] = (content.strip() or None) if calls else content
        if calls:
            message["tool_calls"] = calls
        self.calls = len(calls)
        return message

    def delta(self, piece: str, final: bool) -> dict[str, Any]:
        """A stream's delta for a new piece of text (`final`: the reply's last)."""
        if self.tools is None:
            return {"content": piece} if piece else {}
        if self.tools.choice == "named":
            return self._named(piece)
        if self.tools.choice == "required":
            self.text += piece
            if not final:
                return {}
            return self._with_calls("", self.tools.forced_calls(self.text))
        assert self.parser is not None
        content, calls = self.parser.feed(piece)
        if final:
            more, late = self.parser.finish()
            content, calls = content + more, calls + late
        return self._with_calls(content, calls)

    def finish_reason(self, reason: str) -> str:
        """ "tool_calls" for a reply that made calls and ended by itself; one cut short by
        max_tokens stays "length", as OpenAI reports it."""
        return "tool_calls" if self.calls and reason == "stop" else reason

    def _named(self, piece: str) -> dict[str, Any]:
        if self.named is None:
            assert self.tools is not None and self.tools.named is not None
            self.named = new_call(self.tools.named, piece)
            self.calls = 1
            return {"tool_calls": [{"index": 0, **self.named}]}
        if not piece:
            return {}
        return {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}

    def _with_calls(self, content: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        if content:
            delta["content"] = content
        if calls:
            delta["tool_calls"] = [{"index": self.calls + k, **c} for k, c in enumerate(calls)]
            self.calls += len(calls)
        return delta
