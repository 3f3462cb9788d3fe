"""OpenAI logprob tokens read as the text does: leading spaces kept, offsets into the text,
bytes of the token, unique top_logprobs keys, and a streamed echo aligned with its logprobs."""

from __future__ import annotations

import openai
import pytest
from loomlm.runtime.server.token_text import Vocabulary
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from tokenizers import decoders as tk_decoders
from transformers import PreTrainedTokenizerFast

PROMPT = "Once upon a time, there was a little"


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def assert_tokens_spell(text: str, tokens: list[str], offsets: list[int]) -> None:
    assert "".join(tokens) == text
    for tok, off in zip(tokens, offsets):
        assert text[off : off + len(tok)] == tok


def test_completion_tokens_keep_their_spaces_and_offsets(client):
    c = client.completions.create(
        model="tinystories-260k", prompt=PROMPT, max_tokens=12, temperature=0, logprobs=5
    )
    choice = c.choices[0]
    lp = choice.logprobs
    assert choice.finish_reason == "length"
    assert any(t.startswith(" ") for t in lp.tokens)  # SentencePiece's spaces survive
    assert_tokens_spell(choice.text, lp.tokens, lp.text_offset)
    # each alternative under its own name: five distinct keys, the chosen token among them
    for row, tok in zip(lp.top_logprobs, lp.tokens):
        assert len(row) == 5 and tok in row


def test_echo_tokens_spell_the_prompt_and_completion(client):
    c = client.completions.create(
        model="tinystories-260k",
        prompt=PROMPT,
        max_tokens=6,
        temperature=0,
        logprobs=2,
        echo=True,
    )
    choice = c.choices[0]
    lp = choice.logprobs
    assert choice.text.startswith(PROMPT)
    assert lp.tokens[0] == "<s>" and lp.text_offset[0] == 0  # BOS: scored by nothing, no text
    assert lp.tokens[1] == "Once"  # the first word has no space before it in the text
    assert_tokens_spell(choice.text, lp.tokens[1:], lp.text_offset[1:])


def test_streamed_echo_sends_the_prompt_with_its_logprobs(client):
    whole = client.completions.create(
        model="tinystories-260k", prompt=PROMPT, max_tokens=8, temperature=0, logprobs=1, echo=True
    )
    chunks = list(
        client.completions.create(
            model="tinystories-260k",
            prompt=PROMPT,
            max_tokens=8,
            temperature=0,
            logprobs=1,
            echo=True,
            stream=True,
        )
    )
    first = chunks[0].choices[0]
    n_prompt = len(whole.choices[0].logprobs.tokens) - 8
    assert first.text.startswith(PROMPT)
    assert first.logprobs.tokens[:n_prompt] == whole.choices[0].logprobs.tokens[:n_prompt]
    text = "".join(ch.choices[0].text for ch in chunks)
    tokens = [t for ch in chunks for t in ch.choices[0].logprobs.tokens]
    offsets = [o for ch in chunks for o in ch.choices[0].logprobs.text_offset]
    assert text == whole.choices[0].text
    assert tokens == whole.choices[0].logprobs.tokens
    assert offsets == whole.choices[0].logprobs.text_offset
    # every chunk's tokens spell that chunk's text
    for ch in chunks:
        assert "".join(t for t in ch.choices[0].logprobs.tokens if t != "<s>") == ch.choices[0].text


def test_chat_logprob_bytes_are_the_tokens_bytes(client):
    c = client.chat.completions.create(
        model="tinystories-260k",
        messages=[{"role": "user", "content": "Tell a story."}],
        max_tokens=10,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = c.choices[0].logprobs.content
    assert "".join(x.token for x in content) == c.choices[0].message.content
    assert any(x.token.startswith(" ") for x in content)
    for x in content:
        assert bytes(x.bytes).decode() == x.token
        names = [t.token for t in x.top_logprobs]
        assert len(set(names)) == 3 and x.token in names


@pytest.fixture(scope="module")
def byte_level_tokenizer():
    """A real byte-level BPE (GPT-2 / Qwen style), trained on ASCII so that other characters
    stay split into byte tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk_decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|end|>"],
    )
    tok.train_from_iterator(["once upon a time there was a story"] * 50, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>")


def test_a_character_split_over_tokens_belongs_to_the_token_completing_it(byte_level_tokenizer):
    tok = byte_level_tokenizer
    vocab = Vocabulary(tok, len(tok))
    assert not vocab.drops_leading_space
    text = "once ꙮ time"
    ids = tok.encode(text) + [tok.eos_token_id]
    reader = vocab.reader(at_start=True)
    read = [reader.read(i) for i in ids]
    assert "".join(r.text for r in read) == text == tok.decode(ids, skip_special_tokens=True)
    assert b"".join(r.raw for r in read) == text.encode()
    partial = [r for r in read if r.token.startswith("bytes:")]
    assert len(partial) == 3  # ꙮ is three bytes, none a token of this vocabulary
    assert [r.text for r in partial] == ["", "", "ꙮ"]
    assert partial[0].token == "bytes:\\x" + f"{'ꙮ'.encode()[0]:02x}"
    assert read[-1].token == "<|end|>" and read[-1].text == ""
    assert reader.offset == len(text)
