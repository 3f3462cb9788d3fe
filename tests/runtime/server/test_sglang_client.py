"""SGLang's own frontend (the `sglang` package's RuntimeEndpoint) runs SGLang programs against
loomlm unchanged: gen, select, regex-constrained gen, streaming and batches."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

# Not importorskip: scripts/setup.sh installs sglang and the test extra what its client
# imports, so a failing import is a broken set-up and must fail here, not skip.
import sglang as sgl

STARTS = ["Once upon a time", "One day, a little dog", "The sun was"]


@sgl.function
def continue_story(s, start):
    s += start
    s += sgl.gen("more", max_tokens=16, temperature=0)


@sgl.function
def pick_animal(s):
    s += "Once upon a time, there was a little"
    s += sgl.select("animal", choices=[" girl", " dog", " car", " tree"])


@sgl.function
def phone_number(s):
    s += "Her phone number was "
    s += sgl.gen("number", max_tokens=16, regex=r"[0-9]{3}-[0-9]{4}", temperature=1.0)


@sgl.function
def two_steps(s):
    s += "Once upon a time"
    s += sgl.gen("first", max_tokens=8, temperature=0)
    s += ". Then"
    s += sgl.gen("second", max_tokens=8, temperature=0)


@pytest.fixture(scope="module")
def backend(server):
    endpoint = sgl.RuntimeEndpoint(server.url)
    sgl.set_default_backend(endpoint)
    yield endpoint


def greedy(engine, text, n):
    return engine.generate(text, {"max_new_tokens": n, "temperature": 0}).text


def test_gen_equals_engine(backend, engine):
    state = continue_story.run(start=STARTS[0])
    assert state["more"] == greedy(engine, STARTS[0], 16)
    two = two_steps.run()
    assert two["first"] == greedy(engine, "Once upon a time", 8)
    assert two["second"] == greedy(engine, "Once upon a time" + two["first"] + ". Then", 8)


def test_select_picks_the_best_normalized_logprob(backend, engine):
    state = pick_animal.run()
    prefix = "Once upon a time, there was a little"
    choices = [" girl", " dog", " car", " tree"]
    prompt_len = len(engine.tokenizer.encode(prefix))
    scores = []
    for c in choices:
        out = engine.generate(
            prefix + c,
            {"max_new_tokens": 0, "temperature": 0},
            return_logprob=True,
            logprob_start_len=max(prompt_len - 2, 0),
        )
        lps = [e[0] for e in out.input_token_logprobs if e[0]]
        scores.append(sum(lps) / len(lps))
    assert state["animal"] == choices[scores.index(max(scores))]
    meta = state.get_meta_info("animal")
    assert meta["normalized_prompt_logprobs"] == pytest.approx(scores, abs=1e-5)


def test_regex_gen(backend):
    states = phone_number.run_batch([{}] * 4)
    for s in states:
        assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", s["number"]), s["number"]


def test_streaming(backend, engine):
    state = continue_story.run(start=STARTS[1], stream=True)
    pieces = list(state.text_iter("more"))
    assert len(pieces) > 1
    assert "".join(pieces) == greedy(engine, STARTS[1], 16)


def test_run_batch(backend, engine):
    states = continue_story.run_batch([{"start": s} for s in STARTS], num_threads=3)
    assert [s["more"] for s in states] == [greedy(engine, s, 16) for s in STARTS]


BRANCHES = (" there was a dog", " there was a cat")
# Run in its own process: when /concate_and_append_request fails, SGLang's client waits for
# ever on non-daemon threads, which would hang this process at exit.
JOIN_PROGRAM = """
import json, sys
import sglang as sgl

@sgl.function
def joined(s, branches):
    s += "Once upon a time"
    forks = s.fork(len(branches))
    for f, b in zip(forks, branches):
        f += b
        f += sgl.gen("tail", max_tokens=4, temperature=0)
    forks.join(mode="concate_and_append")
    s += ". The end"
    s += sgl.gen("after", max_tokens=6, temperature=0)

sgl.set_default_backend(sgl.RuntimeEndpoint(sys.argv[1]))
state = joined.run(branches=json.loads(sys.argv[2]))
print(json.dumps({"text": state.text(), "after": state["after"]}))
"""


def test_fork_join_concate_and_append_finishes(server, engine):
    """SGLang's client appends the branches' text itself, then posts
    /concate_and_append_request (parallel encoding) and waits until it succeeds."""
    try:
        run = subprocess.run(
            [sys.executable, "-c", JOIN_PROGRAM, server.url, json.dumps(BRANCHES)],
            capture_output=True,
            text=True,
            timeout=90,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("fork/join(mode='concate_and_append') hung")
    assert run.returncode == 0, run.stderr[-2000:]
    state = json.loads(run.stdout.strip().splitlines()[-1])
    tails = [greedy(engine, "Once upon a time" + b, 4) for b in BRANCHES]
    joined = "Once upon a time" + "".join(b + t for b, t in zip(BRANCHES, tails))
    assert state["text"].startswith(joined + ". The end")
    assert state["after"] == greedy(engine, joined + ". The end", 6)


def test_concate_and_append_checks_its_fields(server):
    import httpx

    url = server.url + "/concate_and_append_request"
    assert httpx.post(url, json={"src_rids": ["a", "b"], "dst_rid": "c"}).json() == {
        "success": True
    }
    bad = httpx.post(url, json={"src_rids": "a", "dst_rid": "c"})
    assert bad.status_code == 400 and "src_rids" in bad.text
