"""What one chat choice's generated text becomes in OpenAI's shapes: content, tool calls and
finish reason, for a whole reply or for a stream's deltas.

Without tools (or with tool_choice "none") the text is the content. With a named function
the text is the call's arguments: a stream sends the call's id and name first, then the
arguments as they come. With "required" the text is a JSON list of calls, sent once whole.
With "auto" a parser for the template's format separates content from calls (tool_parsers);
a stream sends each call whole once its closing tag (or the reply's end) is seen. A request
made with the deprecated `functions` gets its one call as `function_call`. Before any of
this, a reasoning model's thinking is split off into `reasoning_content` (reasoning).
"""

from __future__ import annotations

from typing import Any

from .reasoning import ReasoningSplitter
from .tool_calls import ToolRequest, new_call
from .tool_parsers import parser_for


class ChatReply:
    """`reasoning`: the --reasoning-parser when the request separates reasoning (None: the
    text is all answer); `stream_reasoning` false holds a stream's reasoning until it ends."""

    def __init__(
        self,
        tools: ToolRequest | None,
        fmt: str,
        reasoning: str | None = None,
        stream_reasoning: bool = True,
    ) -> None:
        self.tools = tools if tools is not None and tools.choice != "none" else None
        self.parser = parser_for(fmt) if self.tools and self.tools.choice == "auto" else None
        self.calls = 0  # calls made (sent, in a stream)
        self.text = ""  # a "required" stream's text, parsed at its end
        self.named: dict[str, Any] | None = None  # a named call being streamed
        self.thinking = ReasoningSplitter(reasoning) if reasoning else None
        self.stream_reasoning = stream_reasoning
        self.held = ""  # reasoning held back (stream_reasoning false)

    def whole(self, text: str) -> dict[str, Any]:
        """The assistant message for a whole reply."""
        reasoning = None
        if self.thinking is not None:
            reasoning, text = self.thinking.split(text)
        message = self._message(text)
        if self.thinking is not None:
            message["reasoning_content"] = reasoning
        if self.tools is not None and self.tools.legacy and "tool_calls" in message:
            message["function_call"] = message.pop("tool_calls")[0]["function"]
        return message

    def delta(self, piece: str, final: bool) -> dict[str, Any]:
        """A stream's delta for a new piece of text (`final`: the reply's last)."""
        if self.thinking is None:
            return self._legacy(self._delta(piece, final))
        reasoning, piece = self.thinking.feed(piece)
        if final:
            more, rest = self.thinking.finish()
            reasoning, piece = reasoning + more, piece + rest
        if not self.stream_reasoning:
            self.held += reasoning
            done = final or self.thinking.state in ("answer", "answer-only")
            reasoning, self.held = (self.held, "") if done else ("", self.held)
        out = self._legacy(self._delta(piece, final))
        return {"reasoning_content": reasoning, **out} if reasoning else out

    def _legacy(self, delta: dict[str, Any]) -> dict[str, Any]:
        """A tool-call delta as the deprecated `function_call` delta (name and arguments)."""
        if self.tools is None or not self.tools.legacy or "tool_calls" not in delta:
            return delta
        [call] = delta.pop("tool_calls")[:1]
        return {**delta, "function_call": call["function"]}

    def _message(self, text: str) -> dict[str, Any]:
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

    def _delta(self, piece: str, final: bool) -> dict[str, Any]:
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
        """The engine's reason, or for a reply that made calls and ended by itself
        "tool_calls" ("function_call" for the deprecated fields); one cut short by
        max_tokens stays "length", as OpenAI reports it."""
        if not self.calls or reason != "stop":
            return reason
        return "function_call" if self.tools is not None and self.tools.legacy else "tool_calls"

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
