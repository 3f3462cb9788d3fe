"""What a client sends never makes the server fetch a URL or read a file, never crashes the
process, and never turns into a RecursionError."""

from __future__ import annotations

import http.server
import json
import threading
import time

import httpx
import pytest
from loomlm.runtime.constrained.schema_check import CheckFailed, SchemaCheck

from .bystander import PROMPT, Bystander
from .live_server import started_server


class CountingServer:
    """A local HTTP server that counts the requests it gets (it should get none)."""

    def __init__(self) -> None:
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                body = b'{"type": "string"}'
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def decoy():
    server = CountingServer()
    yield server
    server.close()


def schemas_with_refs(url: str) -> list[dict]:
    return [
        {"$ref": f"{url}/x"},
        {"type": "object", "properties": {"a": {"$ref": f"{url}/a.json#/defs/b"}}},
        {"type": "object", "properties": {"enum": {"$ref": f"{url}/named-enum"}}},
        {"oneOf": [{"type": "integer"}, {"$ref": "file:///etc/passwd"}]},
        {"$defs": {"p": {"$ref": "/etc/hostname"}}, "$ref": "#/$defs/p"},
        {"$id": f"{url}/root.json", "$ref": "other.json"},
    ]


def test_refs_outside_the_schema_are_400_and_never_fetched(http, server, engine, decoy):
    """Defect 3: a `$ref` to a URL made the server fetch it (and file:// refs were read),
    on the engine thread, with no timeout."""
    with Bystander(server, engine):
        for schema in schemas_with_refs(decoy.url):
            body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 8, "json_schema": schema}}
            r = http.post("/generate", json=body)
            assert r.status_code == 400, (schema, r.text)
            assert "$ref" in r.json()["error"]["message"]
            chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                    "response_format": {"type": "json_schema",
                                        "json_schema": {"name": "x", "schema": schema}}}  # fmt: skip
            assert http.post("/v1/chat/completions", json=chat).status_code == 400
    assert decoy.hits == []


def test_refs_within_the_schema_still_work(http):
    schema = {
        "$id": "https://example.com/person.json",
        "type": "object",
        "properties": {"age": {"$ref": "#/$defs/age"}, "pet": {"$ref": "pet.json"}},
        "required": ["age", "pet"],
        "$defs": {
            "age": {"type": "integer", "minimum": 0, "maximum": 9},
            "pet": {"$id": "pet.json", "enum": ["cat", "dog"]},
        },
    }
    body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 30, "json_schema": schema}}
    r = http.post("/generate", json=body)
    assert r.status_code == 200, r.text
    doc = json.loads(r.json()["text"])
    assert 0 <= doc["age"] <= 9 and doc["pet"] in ("cat", "dog")


def test_the_schema_check_itself_retrieves_nothing(decoy):
    """Second line of defence: even a ref that reached the finished-document check
    resolves against an empty registry, and fails that request alone."""
    check = SchemaCheck.of(json.dumps({"$ref": f"{decoy.url}/x"}))
    with pytest.raises(CheckFailed):
        check.violation('"hello"')
    assert decoy.hits == []


def test_a_backtracking_pattern_is_cut_off_by_the_checks_time_limit():
    check = SchemaCheck.of(json.dumps({"type": "string", "pattern": "^(a|aa)+$"}))
    start = time.perf_counter()
    with pytest.raises(CheckFailed, match="took over"):
        check.violation(json.dumps("a" * 60 + "!"))
    assert time.perf_counter() - start < 5


def grammar_chain(rules: int) -> str:
    return (
        "start: r0\n"
        + "".join(f'r{i}: "x{i}" r{i + 1}\n' for i in range(rules))
        + f'r{rules}: "end"\n'
    )


def test_a_long_rule_chain_neither_crashes_nor_is_compiled_past_the_limit():
    """Defect 4: a chain of 3,000 grammar rules overflowed the compiler's stack: a
    segfault, every connection dropped. Over the limit it is now a 400 before compiling;
    and with the limit raised, 5,000 compile on the compiler's larger stack."""
    with started_server("--max-grammar-rules", "6000") as url, Bystander(url, None, tokens=400):
        for rules, status in [(7000, 400), (5000, 200), (3000, 200)]:
            body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 4, "ebnf": grammar_chain(rules)}}  # fmt: skip
            r = httpx.post(f"{url}/generate", json=body, timeout=60)
            assert r.status_code == status, (rules, r.text[:300])
            if status == 400:
                assert "max_grammar_rules" in r.json()["error"]["message"]
            else:
                assert r.json()["text"].startswith("x0")
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200


DEEP = 100_000


NESTED = [
    ("/generate", {"text": PROMPT, "sampling_params": {"json_schema": "[" * DEEP + "]" * DEEP}}, "json_schema"),
    ("/generate", {"text": PROMPT, "sampling_params": {"json_schema": "{\"a\":" * DEEP + "1" + "}" * DEEP}}, "json_schema"),
    ("/v1/completions", {"prompt": PROMPT, "json_schema": "[" * DEEP}, "json_schema"),
]  # fmt: skip


def with_nested(body: dict, depth: int, leaf: str, key: str | None = None) -> str:
    """`body` as JSON text, its "NESTED" placeholder replaced by `leaf` nested `depth` deep
    in lists (or objects under `key`): written out, since json.dumps itself would recurse."""
    opening, closing = (f'{{"{key}":', "}") if key else ("[", "]")
    return json.dumps(body).replace('"NESTED"', opening * depth + leaf + closing * depth)


def test_deep_nesting_is_400_never_500(http, server, engine):
    """Defect 7: schema text 100k brackets deep, a schema object or a stop list ~1,000 deep
    raised RecursionError: HTTP 500."""
    cases = [(path, json.dumps(body), field) for path, body, field in NESTED]
    generate = {"text": PROMPT, "sampling_params": {"json_schema": "NESTED"}}
    cases.append(
        ("/generate", with_nested(generate, 1000, '{"type":"string"}', "items"), "json_schema")
    )
    generate = {"text": PROMPT, "sampling_params": {"stop": "NESTED"}}
    cases.append(("/generate", with_nested(generate, 1000, '"x"'), "stop"))
    cases.append(
        ("/v1/completions", with_nested({"prompt": PROMPT, "stop": "NESTED"}, 1000, '"x"'), "stop")
    )
    cases.append(("/generate", with_nested({"text": PROMPT, "rid": "NESTED"}, 1000, '"x"'), "rid"))
    with Bystander(server, engine):
        for path, body, field in cases:
            r = http.post(path, content=body)
            assert r.status_code == 400, (path, field, r.text[:300])
            message = r.json()["error"]["message"]
            assert field in message and len(message) < 500, message


def test_an_outlines_compile_that_would_exhaust_memory_fails_alone():
    """outlines-core's schema-to-regex translation multiplies with nesting: 4 levels of
    objects with 20 properties each would take the server's memory. Its compiles run in a
    child process with a memory cap, so the constraint fails alone."""
    from loomlm.runtime.constrained.config import ConstraintConfig
    from loomlm.runtime.constrained.constraint import Constraint
    from loomlm.runtime.constrained.grammar_compiler import GrammarCompiler
    from loomlm.runtime.engine.tokenizer import load_tokenizer

    from ..checkpoints import default_model_dir

    compiler = GrammarCompiler(
        load_tokenizer(default_model_dir()), 512, [2], ConstraintConfig("outlines")
    )
    try:
        schema: dict = {"type": "integer"}
        for _ in range(4):
            schema = {"type": "object", "properties": {f"p{j}": schema for j in range(20)}}
        with pytest.raises(ValueError, match="json_schema: too large for the outlines backend"):
            compiler.compile(Constraint("json_schema", json.dumps(schema)))
        small = compiler.compile(Constraint("json_schema", '{"type": "integer"}'))
        assert small.matcher().error is None
    finally:
        compiler.shutdown()
