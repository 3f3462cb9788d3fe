"""Each token's text as it reads in context, for the OpenAI API's logprobs.

Decoding a token alone loses what only context gives: SentencePiece drops a piece's leading
space (`"upon"` for `" upon"`), and a byte-level token holding part of a UTF-8 character
decodes to U+FFFD. So tokens are read from their bytes (`vocabulary_bytes`), and a stream of
them is decoded as the text is: a character split over tokens belongs to the token that
completes it. A token that completes no character is named as OpenAI names it,
`bytes:\\xe4\\xb8`. Special tokens have no bytes; they read as their own spelling and add
nothing to the text (which skips them). A server without a tokenizer names every token
`token_id:N`, as vLLM does when asked to.
"""

from __future__ import annotations

import codecs
from typing import Any, NamedTuple

from ..constrained.token_bytes import vocabulary_bytes


class TokenText(NamedTuple):
    text: str  # what the token adds to the text ("" while a character is incomplete)
    token: str  # its name in `tokens` / `top_logprobs` (text, or bytes:\xNN... if partial)
    raw: bytes  # its bytes (chat logprobs' `bytes`)


class Vocabulary:
    """The tokenizer's bytes per id, built once per server (151k ids take ~0.2 s)."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.bytes = vocabulary_bytes(tokenizer, vocab_size) if tokenizer is not None else []
        # SentencePiece writes a space before the first word and decoding drops it again.
        self.drops_leading_space = tokenizer is not None and self._drops_leading_space()

    def _drops_leading_space(self) -> bool:
        ids = self.tokenizer.encode("a", add_special_tokens=False)
        first = self.raw(ids[0]) if ids else b""
        return first.startswith(b" ") and not self.tokenizer.decode(ids).startswith(" ")

    def raw(self, token_id: int) -> bytes:
        if 0 <= token_id < len(self.bytes):
            b = self.bytes[token_id]
            if b is not None:
                return b
        return b""

    def is_text(self, token_id: int) -> bool:
        return 0 <= token_id < len(self.bytes) and self.bytes[token_id] is not None

    def spelling(self, token_id: int) -> str:
        """A special token's own spelling (`</s>`), for a token without bytes."""
        piece = None
        if self.tokenizer is not None:
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
        return piece if isinstance(piece, str) else f"token_id:{token_id}"

    def reader(self, at_start: bool) -> TextReader:
        return TextReader(self, at_start)


class TextReader:
    """Reads a sequence of tokens in order, keeping a character split across tokens until
    it is whole. `at_start`: the tokens begin the text (an echoed prompt), where
    SentencePiece's leading space is not part of the text."""

    def __init__(self, vocab: Vocabulary, at_start: bool) -> None:
        self.vocab = vocab
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.at_start = at_start and vocab.drops_leading_space
        self.offset = 0  # characters of text read so far

    def _bytes(self, token_id: int) -> bytes:
        raw = self.vocab.raw(token_id)
        if self.at_start and raw.startswith(b" "):
            raw = raw[1:]
        return raw

    def read(self, token_id: int) -> TokenText:
        if not self.vocab.is_text(token_id):
            return TokenText("", self.vocab.spelling(token_id), b"")
        raw = self._bytes(token_id)
        self.at_start = False
        text = self.decoder.decode(raw)
        self.offset += len(text)
        return TokenText(text, _name(raw, text, self.decoder), raw)

    def peek(self, token_id: int) -> str:
        """What `read` would name this token, without reading it (an alternative's name in
        top_logprobs)."""
        if not self.vocab.is_text(token_id):
            return self.vocab.spelling(token_id)
        raw = self._bytes(token_id)
        state = self.decoder.getstate()
        try:
            text = self.decoder.decode(raw)
            return _name(raw, text, self.decoder)
        finally:
            self.decoder.setstate(state)


def _name(raw: bytes, text: str, decoder: codecs.IncrementalDecoder) -> str:
    """The token's text when its bytes are exactly whole characters; otherwise OpenAI's
    `bytes:` spelling of the bytes themselves."""
    pending = decoder.getstate()[0]
    if not pending and raw == text.encode("utf-8"):
        return text
    return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
