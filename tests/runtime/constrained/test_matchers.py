"""The matcher interface on every backend, over the built-in model's real tokenizer."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from loomlm.runtime.constrained.bitmask import (
    allocate_bitmask,
    apply_token_bitmask_,
    apply_token_bitmask_reference,
)
from loomlm.runtime.constrained.config import ConstraintConfig
from loomlm.runtime.constrained.constraint import Constraint, check_constraint_fields
from loomlm.runtime.constrained.grammar_compiler import GrammarCompiler
from loomlm.runtime.constrained.json_format import JsonFormat, is_bounded
from loomlm.runtime.constrained.jump_forward import jump_forward
from loomlm.runtime.engine.tokenizer import load_tokenizer

from ..checkpoints import default_model_dir

VOCAB = 512
EOS = 2
BACKENDS = ["llguidance", "outlines"] + (
    ["xgrammar"] if importlib.util.find_spec("xgrammar") else []
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(default_model_dir())


@pytest.fixture(scope="module")
def compilers(tokenizer):
    made = {
        name: GrammarCompiler(tokenizer, VOCAB, [EOS], ConstraintConfig(grammar_backend=name))
        for name in BACKENDS
    }
    yield made
    for c in made.values():
        c.shutdown()


def text_ids(tokenizer, text: str) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[1:] if tokenizer.convert_ids_to_tokens(ids[0]) == "\u2581" else ids


def allowed(matcher) -> set[int]:
    bm = allocate_bitmask(1, VOCAB)
    matcher.fill_bitmask(bm, 0)
    words = bm[0].tolist()
    return {t for t in range(VOCAB) if (words[t // 32] >> (t % 32)) & 1}


@pytest.mark.parametrize("vocab", [31, 32, 100, 512])
def test_bitmask_apply_matches_bit_by_bit_reference(vocab):
    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(5, vocab, generator=g)
    words = (vocab + 31) // 32
    bitmask = torch.randint(-(2**31), 2**31 - 1, (3, words), dtype=torch.int32, generator=g)
    rows = torch.tensor([4, 0, 2])
    got = logits.clone()
    apply_token_bitmask_(got, bitmask, rows)
    want = logits.clone()
    want[rows] = apply_token_bitmask_reference(logits[rows], bitmask)
    assert torch.equal(got, want)
    whole = logits[:3].clone()
    apply_token_bitmask_(whole, bitmask)
    assert torch.equal(whole, apply_token_bitmask_reference(logits[:3], bitmask))


@pytest.mark.parametrize("backend", BACKENDS)
def test_regex_matcher_walks_consumes_rolls_back_and_forks(backend, compilers, tokenizer):
    grammar = compilers[backend].compile(Constraint("regex", r"[0-9]{3}-[0-9]{4}"))
    m = grammar.matcher()
    first = allowed(m)
    assert first, "no token allowed at the start"
    pieces = tokenizer.convert_ids_to_tokens(sorted(first))
    digit_pieces = set("0123456789") | {f"<0x3{d}>" for d in range(10)}  # byte fallbacks
    assert set(pieces) <= digit_pieces, pieces
    assert EOS not in first
    ids = text_ids(tokenizer, "555-1234")
    for t in ids:
        assert t in allowed(m)
        assert m.consume(t)
    assert m.is_accepting() and EOS in allowed(m)
    twin = m.fork()
    m.rollback(2)
    assert not m.is_accepting() and EOS not in allowed(m)
    assert twin.is_accepting(), "a fork is independent of its original"
    for t in ids[-2:]:
        assert m.consume(t)
    assert m.is_accepting()
    assert m.consume(EOS) or backend == "xgrammar"


@pytest.mark.parametrize("backend", BACKENDS)
def test_rejected_token_puts_the_matcher_in_error(backend, compilers, tokenizer):
    m = compilers[backend].compile(Constraint("regex", r"[0-9]+")).matcher()
    letter = text_ids(tokenizer, "a")[0]
    assert letter not in allowed(m)
    assert not m.consume(letter)
    assert m.error


@pytest.mark.parametrize("backend", ["llguidance"])
@pytest.mark.parametrize(
    "field, value, words",
    [
        ("regex", "(abc", "regex"),
        ("regex", "[z-a]", "regex"),
        ("ebnf", "start: foo\nfoo: UNDEFINED_RULE", "ebnf"),
        (
            "json_schema",
            {"type": "object", "properties": {"a": {"type": "no-such-type"}}},
            "json_schema",
        ),
        ("json_schema", {"type": "string", "minLength": -1}, "json_schema"),
    ],
)
def test_invalid_constraints_raise_value_errors_naming_the_field(
    backend, compilers, field, value, words
):
    with pytest.raises(ValueError, match=words):
        constraint = check_constraint_fields(
            *(value if f == field else None for f in ("regex", "json_schema", "ebnf", "choices"))
        )
        compilers[backend].compile(constraint)


def test_outlines_refuses_grammars(compilers):
    with pytest.raises(ValueError, match="ebnf: outlines-core compiles regular languages only"):
        compilers["outlines"].compile(Constraint("ebnf", 'start: "a"'))


def test_constraint_fields_are_exclusive_and_typed():
    with pytest.raises(ValueError, match="regex, json_schema: only one constraint"):
        check_constraint_fields("[0-9]", {"type": "string"}, None, None)
    with pytest.raises(ValueError, match="json_schema: not valid JSON"):
        check_constraint_fields(None, "{nope", None, None)
    with pytest.raises(ValueError, match=r"choices\[1\]: expected a non-empty string"):
        check_constraint_fields(None, None, None, ["a", 3])
    with pytest.raises(ValueError, match="json_schema: the schema `false` accepts no document"):
        check_constraint_fields(None, False, None, None)
    a = check_constraint_fields(None, {"type": "object", "b": 1, "a": 2}, None, None)
    b = check_constraint_fields(None, '{"type":"object","b":1,"a":2}', None, None)
    assert a == b, "a schema given as a dict or as its text is one cache key"


def test_json_whitespace_must_be_bounded():
    assert is_bounded(r"[ \n]{0,4}") and is_bounded(" ?")
    assert not is_bounded(r"[ \n]*") and not is_bounded(" +")
    with pytest.raises(ValueError, match="json whitespace: .* unboundedly long"):
        JsonFormat(whitespace=r"\s*")
    with pytest.raises(ValueError, match="json item_separator"):
        JsonFormat(item_separator=";")


def test_json_layout_follows_the_format(tokenizer):
    schema = check_constraint_fields(
        None,
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        None,
        None,
    )
    for fmt, text in ((JsonFormat(), '{"a": 7}'), (JsonFormat(",", ":"), '{"a":7}')):
        c = GrammarCompiler(
            tokenizer, VOCAB, [EOS], ConstraintConfig("llguidance", json_format=fmt)
        )
        m = c.compile(schema).matcher()
        assert m.validate(text_ids(tokenizer, text)) == len(text_ids(tokenizer, text))
        c.shutdown()


def test_schema_the_grammar_cannot_express_is_checked_at_the_end(compilers, tokenizer):
    """uniqueItems is beyond a grammar: EOS is refused until the document validates."""
    schema = {"type": "array", "items": {"enum": [1, 2]}, "uniqueItems": True, "maxItems": 3}
    grammar = compilers["llguidance"].compile(check_constraint_fields(None, schema, None, None))
    assert not grammar.exact
    for doc, valid in (("[1, 2]", True), ("[1, 1]", False)):
        m = grammar.matcher()
        for t in text_ids(tokenizer, doc):
            assert m.consume(t), doc
        assert (EOS in allowed(m)) is valid
        assert m.is_accepting() is valid
        assert m.consume(EOS) is valid


def test_strict_properties_generates_only_listed_properties(tokenizer):
    schema = check_constraint_fields(
        None, {"type": "object", "properties": {"a": {"type": "integer"}}}, None, None
    )
    doc = '{"a": 1, "b": 2}'
    for strict, accepted in ((True, False), (False, True)):
        c = GrammarCompiler(
            tokenizer,
            VOCAB,
            [EOS],
            ConstraintConfig("llguidance", json_format=JsonFormat(strict_properties=strict)),
        )
        m = c.compile(schema).matcher()
        ids = text_ids(tokenizer, doc)
        assert (m.validate(ids) == len(ids)) is accepted
        c.shutdown()


def test_jump_forward_appends_canonical_forced_tokens(compilers, tokenizer):
    backend = compilers["llguidance"].backend_for("regex")
    grammar = compilers["llguidance"].compile(Constraint("regex", r'(a|b)": "[0-9]'))
    m = grammar.matcher()
    sampled = backend.tokenize_bytes(b"a")[0]
    assert m.consume(sampled)
    jump = jump_forward(m, sampled, max_tokens=10)
    assert jump is not None
    written = ([jump.replace_last] if jump.replace_last is not None else [sampled]) + jump.tokens
    assert tokenizer.decode(written) == 'a": "'
    assert written == backend.tokenize_bytes(b'a": "'), "the boundary is re-tokenized"
    assert not m.forced_tokens() and allowed(m) - {EOS}, "next comes a free digit"
    assert jump_forward(m, written[-1], max_tokens=10) is None


def test_compile_cache_and_time_limit(tokenizer):
    c = GrammarCompiler(tokenizer, VOCAB, [EOS], ConstraintConfig("llguidance"))
    one = c.compile(Constraint("regex", "[a-z]+"))
    assert c.compile(Constraint("regex", "[a-z]+")) is one
    c.shutdown()
    slow = GrammarCompiler(
        tokenizer, VOCAB, [EOS], ConstraintConfig("outlines", grammar_compile_timeout=0.001)
    )
    with pytest.raises(ValueError, match=r"json_schema: compiling took longer than 0.001 s"):
        slow.compile(
            check_constraint_fields(
                None,
                {"type": "object", "properties": {k: {"type": "string"} for k in "abcdefgh"}},
                None,
                None,
            )
        )
    slow.shutdown()
