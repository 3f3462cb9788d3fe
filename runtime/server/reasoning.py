"""Reasoning models' thinking, apart from their answer (`--reasoning-parser`, SGLang's flag;
a request's `separate_reasoning`, default true, and `stream_reasoning`).

Both formats write the thinking between `<think>` and `</think>`:
- `deepseek-r1`: the chat template opens `<think>` in the prompt, so the reply starts inside
  the thinking and everything before `</think>` is reasoning (all of it, if the reply never
  closes it);
- `qwen3`: the reply opens `<think>` itself, or (thinking switched off) is all answer.
The reasoning goes to the message's `reasoning_content` (SGLang's and vLLM's field), the rest
is the content that tool-call parsing and the client see.
"""

from __future__ import annotations

from .tool_parsers import partial_suffix

PARSERS = ("deepseek-r1", "qwen3")
OPEN, CLOSE = "<think>", "</think>"


class ReasoningSplitter:
    """Splits a reply, whole (`split`) or as stream pieces (`feed`, `finish`), into
    (reasoning, content). Text that may be the start of a tag is held until it is known."""

    def __init__(self, parser: str) -> None:
        self.state = "thinking" if parser == "deepseek-r1" else "start"
        self.buffer = ""
        self.trim = True

    def split(self, text: str) -> tuple[str | None, str]:
        reasoning, content = self.feed(text)
        more_r, more_c = self.finish()
        thought = (reasoning + more_r).strip()
        return thought or None, content + more_c

    def feed(self, piece: str) -> tuple[str, str]:
        self.buffer += piece
        reasoning = content = ""
        if self.state == "start":
            stripped = self.buffer.lstrip()
            if len(stripped) < len(OPEN) and OPEN.startswith(stripped):
                return "", ""  # may still open
            if stripped.startswith(OPEN):
                self.buffer, self.state = stripped[len(OPEN) :], "thinking"
            else:
                self.state = "answer-only"
        if self.state == "thinking":
            end = self.buffer.find(CLOSE)
            if end < 0:
                keep = partial_suffix(self.buffer, CLOSE)
                cut = len(self.buffer) - keep
                reasoning, self.buffer = self.buffer[:cut], self.buffer[cut:]
                return reasoning, ""
            reasoning, self.buffer = self.buffer[:end], self.buffer[end + len(CLOSE) :]
            self.state = "answer"
        if self.state in ("answer", "answer-only"):
            content, self.buffer = self.buffer, ""
            if self.trim:  # the blank lines a template puts after </think>
                content = content.lstrip("\n")
                self.trim = not content
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        rest, self.buffer = self.buffer, ""
        if self.state == "thinking":
            return rest, ""
        if self.state == "start":
            self.state = "answer-only"
        return "", rest
